"""Token statistics of a dataset version against a base model's tokenizer and chat template.

Only the tokenizer is loaded (``local_files_only``, never remote code), and the rows stay in
memory. Every row is encoded by the training code itself (:mod:`appliance.training.encoding`):
the counts are exactly the lengths training will see, and the position of the first token the
loss is taken on tells which examples a ``max_seq_length`` would cut and which would lose their
answer entirely (training drops those).

Two halves: :func:`measure` and the ``token-stats`` job (:func:`token_stats_job`) load a
tokenizer (so transformers, and with it torch, in a child process); :class:`TokenStats`,
:func:`truncation` and :func:`effective_lengths` are plain arithmetic on the measured lengths,
for the desktop app and the memory estimate, and import nothing heavy. The encrypted cache of
the measurements is :mod:`appliance.datasets.token_cache`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.datasets.canonical import Row, content, summary
from appliance.datasets.control import Progress, no_progress
from appliance.errors import DatasetError, IntegrityError, NotFoundError, UsageError
from appliance.training.encoding import Example, encode_chat, encode_text
from appliance.workspace import Workspace

if TYPE_CHECKING:
    from appliance.jobs.child import JobContext

DEFAULT_MAX_LENGTH = 2048
STATS_FORMAT = 1
"""Version of the cached statistics' JSON; another version is recomputed, not read."""
LOSS_ON = ("assistant", "all")


def model_folder(ws: Workspace, reg: Any, model: str) -> tuple[Path, str]:
    """The folder to load the tokenizer of ``model`` from, and how to name it in output.

    ``model`` is a base model name from the registry, or else the path of a Hugging Face
    model folder (for a model not imported yet).

    Raises:
        NotFoundError: neither a registered model nor a folder.
    """
    try:
        row = reg.base_model(model)
    except NotFoundError as exc:
        path = Path(model).expanduser()
        if path.is_dir():
            return path.absolute(), f"folder {path.absolute()}"
        raise NotFoundError(f"{exc}; or give the path of a model folder") from None
    from appliance.models.use import model_folder as folder_of

    return folder_of(ws, row), f"model {model}"


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer of the model in ``folder``, from local files only.

    Raises:
        DatasetError: the folder has no usable tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"cannot load the tokenizer from {folder} ({reason}); check that the model folder "
            "has its tokenizer files"
        ) from None


def _check_template(rows: Sequence[Row], tokenizer: Any) -> None:
    if any("messages" in r for r in rows) and not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "this model's tokenizer has no chat template, so chat examples cannot be measured "
            "(or trained); choose an instruct/chat model"
        )


def encode_row(tokenizer: Any, row: Row, loss_on: str = "assistant") -> Example:
    """One row (with or without its split) encoded exactly as training encodes it."""
    body = content(row)
    if "messages" in body:
        return encode_chat(tokenizer, body["messages"], loss_on)
    return encode_text(tokenizer, body["text"])


def token_counts(rows: Sequence[Row], tokenizer: Any) -> list[int]:
    """Tokens per example as training encodes it: chat rows through the chat template, text
    rows with their end-of-sequence token."""
    _check_template(rows, tokenizer)
    return [len(encode_row(tokenizer, r, "all").input_ids) for r in rows]


def token_stats(rows: Sequence[Row], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """min, median, p95 and max tokens per example, how many exceed ``max_length``, and how
    many would lose their answer entirely (the prompt alone fills ``max_length``)."""
    if max_length < 1:
        raise UsageError("--max-length must be a positive number of tokens")
    lengths, first, masking = measure(rows, tokenizer)
    stats = TokenStats("", "", "", "", lengths, first, "t" * len(lengths), masking)
    cut = truncation(stats, max_length)
    return {
        **summary(lengths),
        "total": sum(lengths),
        "max_length": max_length,
        "over_max_length": cut.truncated,
        "answer_lost": cut.answer_lost,
    }


def measure(
    rows: Sequence[Row], tokenizer: Any, progress: Progress | None = None
) -> tuple[list[int], list[int], str]:
    """Length and first learned position of every row, as training encodes it.

    Returns:
        ``(lengths, first_learned, masking)``: tokens per example; the position of the first
        token the loss is taken on with ``loss_on=assistant`` (see
        :attr:`~appliance.training.encoding.Example.first_learned`); and the masking measured:
        ``assistant``, or ``all`` for a tokenizer without offsets (which training can only
        train with ``loss_on=all`` either).
    """
    _check_template(rows, tokenizer)
    report = progress or no_progress
    masking = "assistant" if getattr(tokenizer, "is_fast", False) else "all"
    lengths: list[int] = []
    first: list[int] = []
    total = len(rows)
    for index, row in enumerate(rows):
        if index % 64 == 0:
            report(index, total, "tokenizing")
        example = encode_row(tokenizer, row, masking)
        lengths.append(len(example.input_ids))
        first.append(example.first_learned)
    report(total, total, "tokenizing")
    return lengths, first, masking


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


def token_stats_job(ctx: JobContext) -> dict[str, Any]:
    """The ``token-stats`` job: measure a version against a model and cache it, encrypted.

    Params: ``dataset`` (``name@version``) and ``model`` (a registry name). Keys: the data key
    of the version's object and the cache key (:data:`token_cache.CACHE_KEY_NAME`), never the
    master key. The result: ``dataset``, ``model``, ``examples`` and the summary of the lengths
    (min, median, p95, max, total); the lengths themselves go only into the encrypted cache,
    which the parent reads with :func:`token_cache.cached_token_stats`.
    """
    from appliance.datasets import canonical, token_cache
    from appliance.datasets.store import describe, resolve
    from appliance.models.use import model_folder as folder_of

    ref, model = str(ctx.params.get("dataset", "")), str(ctx.params.get("model", ""))
    if not ref or not model:
        raise UsageError("the token-stats job needs the params 'dataset' and 'model'")
    with ctx.registry() as reg:
        version = resolve(reg, ref)
        model_row = reg.base_model(model)
    what = describe(version)
    ctx.progress(0, 0, "decrypting")
    plaintext = ctx.keys.read(ctx.ws.home / version["path"], version["object_id"], what)
    token_cache.check_plaintext(version, plaintext)
    rows = canonical.decode(plaintext, what)
    del plaintext
    ctx.progress(0, 0, "loading tokenizer")
    tokenizer = load_tokenizer(folder_of(ctx.ws, model_row))
    lengths, first, masking = measure(rows, tokenizer, ctx.progress)
    stats = TokenStats(
        dataset=f"{version['name']}@{version['version']}",
        dataset_sha256=version["sha256"],
        model=model_row["name"],
        model_sha256=model_row["sha256"],
        lengths=lengths,
        first_learned=first,
        splits="".join(r["split"][0] for r in rows),
        masking=masking,
    )
    key = ctx.keys.key(token_cache.CACHE_KEY_NAME, "the token statistics cache")
    token_cache.write_cache(ctx.ws, version, model_row, key, stats)
    return {
        "dataset": stats.dataset,
        "model": stats.model,
        "examples": stats.examples,
        **stats.summary(),
    }
