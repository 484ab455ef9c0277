"""Token lengths of a run's training examples, for the pre-flight estimate in the parent.

The estimate sizes activations from the longest micro-batch the data can form, so the parent
(``appliance train``) needs the lengths before the child starts. They are computed exactly as
the child will: the dataset version decrypted in memory, rendered with the base model's chat
template, cut or dropped at ``max_seq_length``, train split only. Only the tokenizer is loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from appliance.errors import ApplianceError
from appliance.training.config import TrainConfig

log = logging.getLogger("appliance.training")


def training_lengths(
    vault: Any, reg: Any, model: str, dataset: str, config: TrainConfig
) -> list[int] | None:
    """Token lengths of the training examples of ``dataset`` for ``model``; None when they
    cannot be computed (the estimate then assumes ``max_seq_length``)."""
    from appliance.datasets.store import load_rows, resolve
    from appliance.datasets.tokens import load_tokenizer
    from appliance.models.use import model_folder
    from appliance.training.data import tokenise

    try:
        rows = load_rows(vault, resolve(reg, dataset))
        tokenizer = load_tokenizer(model_folder(vault.ws, reg.base_model(model)))
        return [len(e.input_ids) for e in tokenise(rows, tokenizer, config.data).train]
    except ApplianceError as exc:
        log.info("no token lengths for the estimate: %s", exc)
        return None
