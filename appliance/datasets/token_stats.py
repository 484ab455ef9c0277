"""Token statistics of a dataset version as numbers: what a ``max_seq_length`` cuts.

Plain arithmetic on the lengths measured by :mod:`appliance.training.dataset_tokens` (in the
``token-stats`` job), importing nothing heavy: the desktop app draws its histogram and the
memory estimate sizes sequences from these, reading them from the encrypted cache
(:func:`appliance.datasets.token_cache.cached_token_stats`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from appliance.datasets.canonical import summary
from appliance.errors import IntegrityError, UsageError

STATS_FORMAT = 1
"""Version of the cached statistics' JSON; another version is recomputed, not read."""
LOSS_ON = ("assistant", "all")


@dataclass(frozen=True)
class TokenStats:
    """Tokens per example of one dataset version against one base model (what is cached).

    Everything is a number: no text of the rows. The lists run in the version's stored order.
    """

    dataset: str
    """``name@version``."""
    dataset_sha256: str
    model: str
    """The base model's registry name."""
    model_sha256: str
    lengths: list[int]
    """Tokens per example as training encodes it (chat template, special tokens), uncut."""
    first_learned: list[int]
    """Per example, the position of the first token the loss is taken on with
    ``loss_on=assistant``: for a chat row, the tokens of its prompt (system and user turns and
    the template's header); 1 for a text row."""
    splits: str
    """One letter per example: ``t`` (train) or ``e`` (eval)."""
    masking: str = "assistant"
    """``assistant``; ``all`` when the tokenizer cannot locate replies (then first_learned is 1)."""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    format: int = STATS_FORMAT

    def __post_init__(self) -> None:
        n = len(self.lengths)
        if len(self.first_learned) != n or len(self.splits) != n:
            raise IntegrityError(f"token statistics of {self.dataset} are inconsistent")

    @property
    def examples(self) -> int:
        return len(self.lengths)

    def indices(self, split: str | None = None) -> list[int]:
        """Positions of the examples of ``split`` (``train``, ``eval``; None: all)."""
        if split is None:
            return list(range(len(self.lengths)))
        if split not in ("train", "eval"):
            raise UsageError(f"unknown split {split!r}; choose train or eval")
        letter = split[0]
        return [i for i, s in enumerate(self.splits) if s == letter]

    def lengths_of(self, split: str | None = None) -> list[int]:
        """Tokens per example of ``split`` (for a histogram)."""
        return [self.lengths[i] for i in self.indices(split)]

    def summary(self, split: str | None = None) -> dict[str, float]:
        """min, median, p95, max and total tokens per example."""
        lengths = self.lengths_of(split)
        return {**summary(lengths), "total": sum(lengths)}

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray, what: str) -> TokenStats:
        """Parse cached statistics.

        Raises:
            IntegrityError: not statistics of this format.
        """
        try:
            body = json.loads(data)
            if body.get("format") != STATS_FORMAT:
                raise ValueError("format")
            return cls(**body)
        except (ValueError, TypeError, AttributeError) as exc:
            raise IntegrityError(
                f"{what} is not token statistics of this version ({exc})"
            ) from None


@dataclass(frozen=True)
class Truncation:
    """What a ``max_seq_length`` does to the examples (the histogram's caption)."""

    max_seq_length: int
    examples: int
    truncated: int
    """Examples longer than ``max_seq_length``: training cuts their end off."""
    answer_lost: int
    """Examples whose prompt alone fills ``max_seq_length``: nothing is left to learn, so
    training drops them (counted in ``truncated`` too)."""
    tokens: int
    """Tokens of all examples, uncut."""
    kept_tokens: int
    """Tokens of the examples training keeps, after the cut (what it processes per epoch)."""

    @property
    def truncated_share(self) -> float:
        return self.truncated / self.examples if self.examples else 0.0

    @property
    def answer_lost_share(self) -> float:
        return self.answer_lost / self.examples if self.examples else 0.0


def _check_args(max_seq_length: int, loss_on: str) -> None:
    if max_seq_length < 1:
        raise UsageError("max_seq_length must be a positive number of tokens")
    if loss_on not in LOSS_ON:
        raise UsageError(f"unknown loss_on {loss_on!r}; choose assistant or all")


def _first(stats: TokenStats, i: int, loss_on: str) -> int:
    return 1 if loss_on == "all" or stats.masking == "all" else stats.first_learned[i]


def truncation(
    stats: TokenStats,
    max_seq_length: int,
    *,
    split: str | None = None,
    loss_on: str = "assistant",
) -> Truncation:
    """How many examples ``max_seq_length`` cuts, and how many lose their answer entirely.

    The same arithmetic as training's tokenisation (``over_length=truncate``): an example is
    cut when it is longer than ``max_seq_length``, and dropped when no learned token is left
    before the cut.

    Args:
        split: ``train``, ``eval`` or None (all examples).
        loss_on: the run's ``loss_on`` (``assistant`` or ``all``).
    """
    _check_args(max_seq_length, loss_on)
    chosen = stats.indices(split)
    truncated = lost = tokens = kept_tokens = 0
    for i in chosen:
        n = stats.lengths[i]
        tokens += n
        kept = min(n, max_seq_length)
        if n > max_seq_length:
            truncated += 1
        if _first(stats, i, loss_on) >= kept:
            lost += 1
        else:
            kept_tokens += kept
    return Truncation(max_seq_length, len(chosen), truncated, lost, tokens, kept_tokens)


def effective_lengths(
    stats: TokenStats,
    max_seq_length: int,
    *,
    split: str | None = "train",
    loss_on: str = "assistant",
    over_length: str = "truncate",
) -> list[int]:
    """The lengths of the sequences training will actually feed the model, in stored order.

    Examples are cut to ``max_seq_length`` (``over_length=truncate``) or left out
    (``over_length=drop``), and left out when nothing is left to learn, as training does. The
    memory estimate sizes activations and logits from these.
    """
    _check_args(max_seq_length, loss_on)
    if over_length not in ("truncate", "drop"):
        raise UsageError(f"unknown over_length {over_length!r}; choose truncate or drop")
    out = []
    for i in stats.indices(split):
        n = stats.lengths[i]
        if n > max_seq_length and over_length == "drop":
            continue
        kept = min(n, max_seq_length)
        if _first(stats, i, loss_on) < kept:
            out.append(kept)
    return out
