"""Selective recompute: gradient checkpointing that keeps the frozen base's matmul outputs.

Full gradient checkpointing keeps each decoder layer's input and, in the backward pass, runs the
layer's forward again to rebuild what its backward needs. On LoRA and QLoRA most of that second
forward is the frozen base's projections (q, k, v, o, gate, up, down), the largest matmuls of
the step, computed a second time to give the same numbers. Here the checkpointed region keeps
those outputs from the first forward (PyTorch's selective activation checkpointing, a policy per
operator) and recomputes only the rest: norms, rotary embeddings, attention, activations, the
LoRA branches and dropout (its masks redrawn from the saved random state, as before).

What it costs is memory: one value per output feature of each frozen projection, per token and
layer (``3h + 2kv + 2f`` values; 5,184 for SmolLM2, 20 KB a token and layer in fp32), against
the one hidden-state a token and layer full checkpointing keeps. What it saves is a third of
the matmul work of a step. The loss and gradients are the same numbers (the kept outputs are
those the recompute would produce; tests compare them).

A frozen projection is told apart from a trainable one by its weight: the dequantised 4-bit
weight (made inside bitsandbytes' autograd function) and a frozen 16/32-bit weight do not
require gradients; LoRA's A and B do, and their (small) products are recomputed.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    SelectiveCheckpointContext,
    create_selective_checkpoint_contexts,
)

_aten = torch.ops.aten
WEIGHT_ARGUMENT = {_aten.mm.default: 1, _aten.addmm.default: 2}
"""The matmuls a 16/32-bit linear layer becomes, and which argument holds the (transposed)
weight."""
FROZEN_MATMULS = frozenset({"bitsandbytes.gemm_4bit.default"})
"""Operators that multiply by a 4-bit weight (never trainable). bitsandbytes' 4-bit layer runs
its forward as this one operator (dequantise + matmul); on our CPUs it is about a third of a
QLoRA step."""


def keep_frozen_matmuls(
    ctx: SelectiveCheckpointContext, func: Any, *args: Any, **kwargs: Any
) -> CheckpointPolicy:
    """Keep the output of a matmul by a weight that needs no gradient; recompute the rest."""
    del ctx, kwargs
    position = WEIGHT_ARGUMENT.get(func)
    if position is not None:
        frozen = not args[position].requires_grad
    else:
        frozen = str(func) in FROZEN_MATMULS
    return CheckpointPolicy.MUST_SAVE if frozen else CheckpointPolicy.PREFER_RECOMPUTE


def context_fn() -> Any:
    """A fresh pair of selective-checkpointing contexts for one checkpointed call."""
    return create_selective_checkpoint_contexts(keep_frozen_matmuls)


def checkpoint_kwargs(keep_matmuls: bool, *, recorded: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``torch.utils.checkpoint.checkpoint`` (non-reentrant).

    ``recorded``: the frozen projections record their outputs themselves
    (:mod:`.frozen_matmul`, the CPU's path: their layers must have been given its forward);
    otherwise this module's policy picks them out operator by operator."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if keep_matmuls and recorded:
        from appliance.training import frozen_matmul

        kwargs["context_fn"] = frozen_matmul.context_fn
    elif keep_matmuls:
        kwargs["context_fn"] = functools.partial(context_fn)
    return kwargs
