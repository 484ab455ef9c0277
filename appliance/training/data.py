"""Training data in memory: canonical rows -> token ids and labels -> deterministic batches.

How one row becomes token ids and labels is in :mod:`appliance.training.encoding` (torch-free,
shared with the token statistics of a dataset, so their counts match training exactly).

How examples are grouped into micro-batches, in what order and layout, is
:mod:`appliance.training.batching`: a pure function of the seed and the position in the run, so a
resumed run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.datasets.canonical import Row, content
from appliance.errors import DatasetError
from appliance.training.batching import Batch, BatchPlan, collate, total_steps
from appliance.training.config import DataSettings
from appliance.training.encoding import (
    IGNORE,
    Example,
    assistant_spans,
    encode_chat,
    encode_text,
)

__all__ = [
    "IGNORE",
    "Batch",
    "BatchPlan",
    "Example",
    "Tokenised",
    "assistant_spans",
    "collate",
    "encode_chat",
    "encode_text",
    "tokenise",
    "total_steps",
]

log = logging.getLogger("appliance.training")


@dataclass
class Tokenised:
    """The train and eval examples of a dataset version, and what had to be cut."""

    train: list[Example]
    eval: list[Example]
    truncated: int
    """Examples longer than max_seq_length that were cut (over_length=truncate)."""
    dropped: int
    """Examples left out: too long with over_length=drop, or nothing left to learn after a cut."""


def tokenise(rows: Sequence[Row], tokenizer: Any, settings: DataSettings) -> Tokenised:
    """Tokenise the rows of a dataset version into train and eval examples.

    Raises:
        DatasetError: chat rows and the model has no chat template, or no training example
            is left.
    """
    if any("messages" in r for r in rows) and not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            "this model's tokenizer has no chat template, so chat examples cannot be trained; "
            "choose an instruct/chat model"
        )
    out: dict[str, list[Example]] = {"train": [], "eval": []}
    truncated = dropped = 0
    limit = settings.max_seq_length
    for row in rows:
        body = content(row)
        if "messages" in body:
            example = encode_chat(tokenizer, body["messages"], settings.loss_on)
        else:
            example = encode_text(tokenizer, body["text"])
        if len(example.input_ids) > limit:
            if settings.over_length == "drop":
                dropped += 1
                continue
            truncated += 1
            example = Example(example.input_ids[:limit], example.labels[:limit])
        if example.trained_tokens == 0:
            dropped += 1
            continue
        out[row["split"]].append(example)
    if not out["train"]:
        raise DatasetError(
            f"no training example is left after tokenising ({dropped} dropped, {truncated} "
            "truncated); raise max_seq_length or check the dataset's train split"
        )
    if truncated or dropped:
        log.warning(
            "%d examples were truncated and %d dropped at max_seq_length=%d",
            truncated,
            dropped,
            limit,
        )
    return Tokenised(out["train"], out["eval"], truncated, dropped)
