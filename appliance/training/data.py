"""Training data in memory: canonical rows -> token ids and labels -> deterministic batches.

Chat rows are rendered with the base model's own chat template, exactly as the model will see
them at inference. With ``loss_on=assistant`` (the default) only the tokens of the assistant's
replies (their text and the template's end-of-turn marker) carry a label; everything else is
``-100``, which the loss ignores. Text rows are trained on every token.

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
from appliance.training.batching import (
    IGNORE,
    Batch,
    BatchPlan,
    Example,
    collate,
    total_steps,
)
from appliance.training.config import DataSettings

__all__ = [
    "IGNORE",
    "Batch",
    "BatchPlan",
    "Example",
    "Tokenised",
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


def _chat_template_text(tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    return str(text)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[range]]:
    """The rendered conversation and the character ranges of the assistant's replies.

    Each reply's range runs from the end of the prompt the template writes before it (the
    rendering of the earlier messages with the generation prompt) to the end of the rendering
    that includes it, so it covers the reply and its end-of-turn marker. Templates whose
    renderings are not prefixes of each other fall back to finding the reply's text.
    """
    full = _chat_template_text(tokenizer, messages, prompt=False)
    spans: list[range] = []
    search_from = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            before = _chat_template_text(tokenizer, messages[:index], prompt=True)
            through = _chat_template_text(tokenizer, messages[: index + 1], prompt=False)
        except Exception:  # a template that refuses a partial conversation
            before = through = ""
        if before and through.startswith(before) and full.startswith(through):
            spans.append(range(len(before), len(through)))
            search_from = len(through)
            continue
        found = full.find(message["content"], search_from)
        if found < 0:
            raise DatasetError(
                "the model's chat template changes the assistant's text, so replies cannot be "
                "located for loss masking; train with --set loss_on=all"
            )
        spans.append(range(found, found + len(message["content"])))
        search_from = found + len(message["content"])
    return full, spans


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], loss_on: str) -> Example:
    """Token ids and labels of one conversation."""
    if loss_on == "all":
        text = _chat_template_text(tokenizer, messages, prompt=False)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return Example(ids, list(ids))
    if not getattr(tokenizer, "is_fast", False):
        raise DatasetError(
            "loss on assistant tokens needs a fast tokenizer (tokenizer.json) to map replies to "
            "tokens; this model has none: train with --set loss_on=all"
        )
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [IGNORE] * len(ids)
    for position, (start, _end) in enumerate(encoded["offset_mapping"]):
        if any(start in span for span in spans):
            labels[position] = ids[position]
    return Example(ids, labels)


def encode_text(tokenizer: Any, text: str) -> Example:
    """A plain-text row: every token is learned, ending with the end-of-sequence token."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return Example(ids, list(ids))


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
