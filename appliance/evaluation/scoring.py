"""Scoring rows with a loaded :class:`~appliance.generation.engine.Engine` (torch).

Rows are encoded once with training's own encoding (:func:`appliance.training.data.encode_chat`
with the loss on the assistant's tokens), then each model (base, each adapter) is scored on
the same encoded rows: the loss in micro-batches with training's loss function, then a greedy
answer per row that has a short reference answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from appliance.datasets.canonical import Row, content
from appliance.errors import UsageError
from appliance.evaluation.metrics import EvalSettings, Scores, is_reference
from appliance.generation.engine import Engine
from appliance.generation.settings import GenerationSettings
from appliance.training.data import collate
from appliance.training.encoding import Example, encode_chat
from appliance.training.loop import loss_sum

UnitsDone = Callable[[int], None]
"""Called with the number of work units just finished (the evaluation job turns them into
:data:`appliance.progress.Progress` reports)."""


@dataclass
class EvalRow:
    """One encoded row."""

    example: Example
    """The whole conversation; labels on the assistant's tokens only."""
    prompt_ids: list[int] | None
    """The conversation before the last reply, ready to answer; None without a reference."""
    reference: str | None
    """The last reply, when short enough to compare answers with."""


@dataclass
class Encoded:
    """The rows that can be scored, and what was left out."""

    rows: list[EvalRow]
    too_long: int
    """Rows longer than the model's context: left out (their count is reported)."""

    @property
    def references(self) -> int:
        return sum(1 for r in self.rows if r.reference is not None)


def encode_rows(rows: Sequence[Row], engine: Engine, settings: EvalSettings) -> Encoded:
    """Encode chat rows for scoring (callers refuse text rows before)."""
    out: list[EvalRow] = []
    too_long = 0
    for row in rows:
        messages = content(row)["messages"]
        example = encode_chat(engine.tokenizer, messages, "assistant")
        if len(example.input_ids) > engine.context_length or example.trained_tokens == 0:
            too_long += 1
            continue
        last = messages[-1]["content"]
        prompt_ids: list[int] | None = None
        reference: str | None = None
        if is_reference(last, settings.reference_max_words):
            try:
                prompt_ids = engine.prompt_ids(messages[:-1])
                reference = last
            except UsageError:
                pass  # the prompt alone fills the context: loss only for this row
        out.append(EvalRow(example, prompt_ids, reference))
    return Encoded(out, too_long)


def score(
    engine: Engine,
    adapter: str | None,
    encoded: Encoded,
    settings: EvalSettings,
    progress: UnitsDone | None = None,
) -> Scores:
    """The figures of one model (``adapter``, or the base for None) on the encoded rows."""
    scores = Scores(rows=len(encoded.rows))
    size = settings.micro_batch_size
    examples = [r.example for r in encoded.rows]
    with engine.use(adapter), torch.inference_mode():
        for start in range(0, len(examples), size):
            part = examples[start : start + size]
            batch = collate(part, engine.pad_id).to(engine.device)
            scores.loss_sum += float(loss_sum(engine.model, batch))
            scores.answer_tokens += batch.trained_tokens
            if progress is not None:
                progress(len(part))
    greedy = GenerationSettings(max_new_tokens=settings.max_new_tokens)
    for row in encoded.rows:
        if row.prompt_ids is None or row.reference is None:
            continue
        answer = engine.generate(row.prompt_ids, adapter, greedy)
        scores.add_answer(answer.text, row.reference, answer.tokens, answer.seconds)
        if progress is not None:
            progress(1)
    return scores
