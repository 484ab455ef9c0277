"""Encoding one row as training sees it: token ids and the labels the loss is taken on.

Torch-free on purpose: the token statistics of a dataset (:mod:`appliance.training.dataset_tokens`)
call these same functions, so the counts they show are exactly what training will see.
Chat rows are rendered with the base model's own chat template. With ``loss_on=assistant``
only the tokens of the assistant's replies (their text and the template's end-of-turn marker)
carry a label; everything else is ``-100``, which the loss ignores. Text rows are trained on
every token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.errors import DatasetError

IGNORE = -100
"""Label of a token the loss skips."""


@dataclass
class Example:
    """One tokenised conversation."""

    input_ids: list[int]
    labels: list[int]
    """Same length as ``input_ids``; ``IGNORE`` where no loss is taken."""

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE)

    @property
    def first_learned(self) -> int:
        """The position of the first token the loss is taken on, counting from 1 as
        :attr:`trained_tokens` does (the first token is never predicted); the length when
        there is none.

        Cut to ``max_seq_length`` tokens, the example keeps something to learn exactly when
        ``first_learned < min(max_seq_length, len(input_ids))``: this is how the token
        statistics tell which examples training would drop.
        """
        for position in range(1, len(self.labels)):
            if self.labels[position] != IGNORE:
                return position
        return len(self.labels)


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
