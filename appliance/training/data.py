"""Training data in memory: canonical rows -> token ids and labels -> deterministic batches.

How one row becomes token ids and labels is in :mod:`appliance.training.encoding` (torch-free,
shared with the token statistics of a dataset, so their counts match training exactly).

The order of examples is a pure function of the seed and the position in the run: epoch ``e``
visits the training examples in ``randperm(n, seed(e))`` and optimizer step ``s`` consumes
micro-batches ``s*accum .. (s+1)*accum - 1`` of that endless sequence. So the data position of a
checkpoint is just its step number, and a resumed run sees exactly the batches an uninterrupted
one would have seen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from appliance.datasets.canonical import Row, content
from appliance.errors import DatasetError
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


@dataclass
class Batch:
    """A padded micro-batch as tensors."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def trained_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad examples to the longest one; padding is masked and unlabelled."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
    return Batch(ids, mask, labels)


class BatchPlan:
    """Which examples each micro-batch of the run holds, from the seed alone."""

    def __init__(self, examples: Sequence[Example], micro_batch_size: int, seed: int) -> None:
        self.examples = list(examples)
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.per_epoch = math.ceil(len(self.examples) / micro_batch_size)
        """Micro-batches in one pass over the examples."""
        self._epoch = -1
        self._order: list[int] = []

    def order(self, epoch: int) -> list[int]:
        """The shuffled order of examples in ``epoch`` (0-based)."""
        if epoch != self._epoch:
            # A private generator: the global RNG (dropout) is not touched by shuffling.
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.examples), generator=generator).tolist()
            self._epoch = epoch
        return self._order

    def micro_batch(self, index: int) -> list[Example]:
        """The examples of micro-batch ``index`` of the run (0-based, across epochs)."""
        epoch, within = divmod(index, self.per_epoch)
        order = self.order(epoch)
        start = within * self.micro_batch_size
        return [self.examples[i] for i in order[start : start + self.micro_batch_size]]

    def epoch_at(self, micro_batches_done: int) -> float:
        """Fractional epochs after ``micro_batches_done`` micro-batches."""
        return micro_batches_done / self.per_epoch


def total_steps(plan: BatchPlan, epochs: float, max_steps: int, accumulation: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or enough for ``epochs`` passes."""
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(epochs * plan.per_epoch / accumulation))
