"""The memory estimate of one process when several train together: DDP replicas, FSDP shards.

:func:`per_device` turns the single-device estimate (:func:`~appliance.training.estimate.
estimate_memory`, which already counts one process's micro-batch) into what each process needs:

* **DDP**: every process holds the whole base and its own activations, so the single-device
  figure stands, plus DDP's gradient buckets (a second fp32 copy of the LoRA gradients that
  the all-reduce works on).
* **FSDP**: the base weights, the embeddings and the LoRA weights with their gradients and
  AdamW moments are split across the processes (``1 / world`` each), plus the unit being
  computed gathered whole: one decoder layer's weights, twice (the next one is prefetched
  while the current one computes). Activations stay per process.

Terms keep their keys (``weights``, ``embeddings``, ``lora``...), so charts and tests read them as
before; the added ones are ``ddp_buckets`` and ``fsdp_gather``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from appliance.training.config import TrainConfig
from appliance.training.estimate import (
    DTYPE_BYTES,
    NF4_DOUBLE_QUANT_BYTES,
    EstimateItem,
    MemoryEstimate,
    ModelShape,
    lora_parameter_count,
)

SHARDED = ("weights", "embeddings", "lora")
"""Terms FSDP divides among the processes."""
PREFETCHED_LAYERS = 2
"""Decoder layers gathered whole at once under FSDP: the one computing and the next."""


def per_device(
    estimate: MemoryEstimate,
    model_config: Mapping[str, Any],
    config: TrainConfig,
    world_size: int,
    parallel: str,
) -> MemoryEstimate:
    """What each of ``world_size`` processes needs (``estimate`` when there is one process)."""
    if world_size <= 1 and parallel != "fsdp":
        return estimate
    shape = ModelShape.from_config(model_config)
    lora_params = lora_parameter_count(shape, config.lora.rank, config.lora.target_modules)
    items = list(estimate.items)
    if parallel != "fsdp":
        items.insert(
            _after(items, "lora"),
            EstimateItem(
                "ddp_buckets",
                "DDP gradient buckets",
                4 * lora_params,
                f"{lora_params / 1e6:,.2f} M LoRA gradients x 4 B, a second copy for all-reduce",
            ),
        )
        return dataclasses.replace(estimate, items=tuple(items))
    world = max(1, world_size)
    sharded = [
        dataclasses.replace(
            item,
            label=f"{item.label} (1/{world})",
            bytes=-(-item.bytes // world),
            detail=f"{item.detail}, sharded over {world} GPUs",
        )
        if item.key in SHARDED
        else item
        for item in items
    ]
    layer_params = sum(i * o for i, o in shape.linear_shapes().values())
    width = DTYPE_BYTES[estimate.dtype]
    per_param = NF4_DOUBLE_QUANT_BYTES if config.method == "qlora" else width
    gathered = round(PREFETCHED_LAYERS * layer_params * per_param)
    sharded.insert(
        _after(sharded, "lora"),
        EstimateItem(
            "fsdp_gather",
            "FSDP gathered layers",
            gathered,
            f"{PREFETCHED_LAYERS} decoder layers whole ({layer_params / 1e6:,.1f} M params x "
            f"{per_param} B) while computing",
        ),
    )
    return dataclasses.replace(estimate, items=tuple(sharded))


def _after(items: list[EstimateItem], key: str) -> int:
    for position, item in enumerate(items):
        if item.key == key:
            return position + 1
    return len(items)
