"""One optimizer step: gradients summed over the step's micro-batches, clipped, applied.

The normalisation rule: the loss of a step is the sum of its label tokens' losses divided by the
number of label tokens in the whole step (every micro-batch of it), never an average of
per-micro-batch averages. So every label token weighs the same however the step is cut into
micro-batches and accumulation steps, and (with the denominator summed across processes) however
many processes share it. The denominator is counted from the labels before any forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from appliance.training.batching import Batch

LossFn = Callable[[Any, Batch], tuple[torch.Tensor, int]]
"""(model, batch on the device) -> (sum of token losses, label tokens)."""


@dataclass
class StepResult:
    """What one optimizer step did."""

    loss: float
    """Mean loss per label token over the step."""
    grad_norm: float
    """Global gradient norm before clipping."""
    label_tokens: int
    real_tokens: int
    """Tokens that are not padding."""
    computed_tokens: int
    """Positions the model computed, padding included."""


def accumulate(
    model: Any,
    batches: Sequence[Batch],
    loss_fn: LossFn,
    device: torch.device | str,
    denominator: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Backward over ``batches``, each micro-batch's loss sum divided by ``denominator``.

    Args:
        denominator: label tokens of the whole step; by default those of ``batches``. A caller
            that splits a step across processes passes the global count.

    Returns:
        The summed token loss (a detached tensor on the device, to avoid a sync per
        micro-batch) and the denominator used.
    """
    if denominator is None:
        denominator = sum(b.trained_tokens for b in batches)
    total = torch.zeros((), dtype=torch.float32, device=device)
    for batch in batches:
        loss_sum, _ = loss_fn(model, batch.to(device))
        (loss_sum / denominator).backward()
        total += loss_sum.detach().float()
    return total, denominator


def apply_gradients(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    max_grad_norm: float,
    clip: Callable[[float], torch.Tensor] | None = None,
) -> float:
    """Clip to ``max_grad_norm`` (0: no clipping), step, advance the schedule, clear gradients.

    Args:
        clip: what clips to a norm and returns the norm before clipping, where ``params`` alone
            cannot tell it (FSDP: each process holds a shard, the norm is over all of them);
            default: ``torch.nn.utils.clip_grad_norm_`` over ``params``.

    Returns:
        The gradient norm before clipping.
    """
    limit = max_grad_norm if max_grad_norm > 0 else math.inf
    norm = clip(limit) if clip is not None else torch.nn.utils.clip_grad_norm_(params, limit)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def train_step(
    model: Any,
    batches: Sequence[Batch],
    loss_fn: LossFn,
    device: torch.device | str,
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    max_grad_norm: float,
) -> StepResult:
    """Accumulate over ``batches`` and apply one optimizer step."""
    total, denominator = accumulate(model, batches, loss_fn, device)
    norm = apply_gradients(params, optimizer, scheduler, max_grad_norm)
    return StepResult(
        loss=float(total) / denominator,
        grad_norm=norm,
        label_tokens=denominator,
        real_tokens=sum(b.real_tokens for b in batches),
        computed_tokens=sum(b.computed_tokens for b in batches),
    )
