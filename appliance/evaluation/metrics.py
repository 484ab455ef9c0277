"""What an evaluation measures, and its settings. Torch-free.

Per model (an adapter version, or its base alone) on the chosen rows:

- **answer loss**: cross-entropy per token of the assistant's replies only, exactly as training
  computes its eval loss (same encoding, same masking); **perplexity** is ``exp`` of it.
- for rows whose last reply is a *short reference answer* (at most
  :attr:`EvalSettings.reference_max_words` words): the model's greedy answer to the
  conversation before that reply, compared after normalisation (case, whitespace,
  punctuation): **exact match** (the same words) and **contains** (the reference's words appear
  in the answer, in order, as whole words).
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from appliance.errors import UsageError


@dataclass(frozen=True)
class EvalSettings:
    """How an evaluation runs; stored with every result, so figures can be compared."""

    max_new_tokens: int = 64
    """Greedy answers to rows with a reference answer stop after this many tokens."""
    reference_max_words: int = 32
    """A last reply of at most this many words is a reference answer for exact/contains."""
    micro_batch_size: int = 4
    """Rows per forward pass when computing the loss (memory, not results)."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "reference_max_words", "micro_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise UsageError(f"invalid eval setting: {name} is {value!r}; give 1 to 4096")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EvalSettings:
        """Settings from a JSON object; keys that are not settings are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


def comparable(settings: dict[str, Any]) -> tuple[Any, ...]:
    """What must be equal for two stored results to be compared: the settings that change
    figures (the batch size does not) and the precision the model ran in."""
    return (
        settings.get("max_new_tokens"),
        settings.get("reference_max_words"),
        settings.get("precision"),
    )


def normalise_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: what exact/contains compare."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in folded)
    return " ".join(kept.split())


def words(text: str) -> int:
    return len(text.split())


def is_reference(text: str, max_words: int) -> bool:
    """Whether a reply is short enough to be checked as a reference answer."""
    return 0 < words(normalise_answer(text)) <= max_words


def exact_match(answer: str, reference: str) -> bool:
    return normalise_answer(answer) == normalise_answer(reference)


def contains(answer: str, reference: str) -> bool:
    """The reference's normalised words appear in the answer as a run of whole words."""
    ref = normalise_answer(reference)
    return bool(ref) and f" {ref} " in f" {normalise_answer(answer)} "


@dataclass
class Scores:
    """The figures of one model on the rows, accumulated as rows are scored."""

    rows: int = 0
    answer_tokens: int = 0
    loss_sum: float = 0.0
    reference_rows: int = 0
    exact: int = 0
    contained: int = 0
    generated_tokens: int = 0
    generation_s: float = 0.0

    def add_answer(self, answer: str, reference: str, tokens: int, seconds: float) -> None:
        self.reference_rows += 1
        self.exact += exact_match(answer, reference)
        self.contained += contains(answer, reference)
        self.generated_tokens += tokens
        self.generation_s += seconds

    def metrics(self) -> dict[str, Any]:
        """JSON-ready figures (what the registry stores): numbers only."""
        loss = self.loss_sum / self.answer_tokens if self.answer_tokens else None
        refs = self.reference_rows
        return {
            "rows": self.rows,
            "answer_tokens": self.answer_tokens,
            "answer_loss": loss,
            "perplexity": _perplexity(loss),
            "reference_rows": refs,
            "exact_match": self.exact / refs if refs else None,
            "contains": self.contained / refs if refs else None,
            "exact_count": self.exact,
            "contains_count": self.contained,
            "tokens_per_s": self.generated_tokens / self.generation_s
            if self.generation_s > 0
            else None,
        }


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
