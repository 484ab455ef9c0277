"""A cheaper dropout for LoRA's inputs on CPU.

peft applies dropout to the input of every adapter (seven per decoder layer). On CPU,
``torch.nn.Dropout`` draws one Mersenne-Twister number per element through ``bernoulli_``, which
took 6-7% of a SmolLM2 training step in the profile (bench/profile_step.py). Here one 64-bit
draw yields four 16-bit lanes, each compared with a threshold: a quarter of the generator calls
and a vectorised comparison. The drop probability is ``p`` rounded to a multiple of 1/65536
(0.05 becomes 0.0500031), and kept values are scaled by exactly ``1 / (1 - p_rounded)``, so the
expectation is unchanged as with ``nn.Dropout``. The draws come from torch's global CPU
generator, which checkpoints capture, so a resumed run draws the same masks.

On CUDA ``nn.Dropout`` is already a fast Philox kernel and is kept.
"""

from __future__ import annotations

from typing import Any

import torch

LANES = 1 << 16
"""Values of one 16-bit lane: the drop probability's resolution is 1 / LANES."""


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale``, saving the boolean mask (1 byte a value) for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.mul(x, keep).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None, None


def keep_mask(shape: torch.Size, device: torch.device, drop_lanes: int) -> torch.Tensor:
    """A boolean mask of ``shape``, each value False with probability ``drop_lanes / LANES``."""
    count = 1
    for size in shape:
        count *= size
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None)  # the full 64-bit range: four uniform 16-bit lanes
    lanes = words.view(torch.int16)[:count].view(shape)
    return lanes >= (-(LANES // 2) + drop_lanes)


class FastDropout(torch.nn.Module):
    """Drop-in for ``nn.Dropout(p)`` on CPU tensors (see the module docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability {p} is not in [0, 1)")
        self.p = p
        self.drop_lanes = round(p * LANES)
        self.scale = LANES / (LANES - self.drop_lanes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_lanes == 0:
            return x
        keep = keep_mask(x.shape, x.device, self.drop_lanes)
        return _MaskedScale.apply(x, keep, self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Replace every ``nn.Dropout`` inside peft's ``lora_dropout`` containers by
    :class:`FastDropout` of the same probability; returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        container = getattr(module, "lora_dropout", None)
        if not isinstance(container, torch.nn.ModuleDict):
            continue
        for name, dropout in list(container.items()):
            if type(dropout) is torch.nn.Dropout and dropout.p > 0:
                fast = FastDropout(dropout.p)
                fast.train(dropout.training)
                container[name] = fast
                replaced += 1
    return replaced
