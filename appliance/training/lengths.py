"""Token lengths of a run's training examples, for the pre-flight estimate in the parent.

The estimate sizes activations from the longest micro-batch the data can form, so the parent
(``appliance train``) needs the lengths before the child starts. They come from the dataset
version's token statistics against the base model (:mod:`appliance.datasets.token_cache`:
encrypted, cached per version and model, measured by a ``token-stats`` job on a miss, with the
same encoding as training), cut or dropped at ``max_seq_length`` as training will.
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
    cannot be had (the estimate then assumes ``max_seq_length``)."""
    from appliance.datasets.token_cache import compute_token_stats
    from appliance.datasets.token_stats import effective_lengths

    data = config.data
    try:
        stats = compute_token_stats(vault, reg, dataset, model)
        return effective_lengths(
            stats, data.max_seq_length, loss_on=data.loss_on, over_length=data.over_length
        )
    except ApplianceError as exc:
        log.info("no token lengths for the estimate: %s", exc)
        return None


def cached_training_lengths(
    vault: Any, reg: Any, model: str, dataset: str, config: TrainConfig
) -> list[int] | None:
    """:func:`training_lengths` from the cache alone, never measuring: what the desktop app's
    Train page estimates with (measuring loads a tokenizer, which runs in a child process: the
    Datasets page's token statistics fill the cache). None on a miss."""
    from appliance.datasets.token_cache import cached_token_stats
    from appliance.datasets.token_stats import effective_lengths

    data = config.data
    try:
        stats = cached_token_stats(vault, reg, dataset, model)
    except ApplianceError as exc:
        log.info("no token lengths for the estimate: %s", exc)
        return None
    if stats is None:
        return None
    return effective_lengths(
        stats, data.max_seq_length, loss_on=data.loss_on, over_length=data.over_length
    )
