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


def _mask(lanes: torch.Tensor, threshold: int, dtype: torch.dtype) -> torch.Tensor:
    """1 where a lane is at or above ``threshold``, else 0, in ``dtype``: compared straight into
    a float tensor, four times faster than a boolean result on the CPU."""
    out = torch.empty(lanes.shape, dtype=dtype, device=lanes.device)
    return torch.ge(lanes, threshold, out=out)


def _scaled(values: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """``values * mask * scale``; in float32 the scale goes into the mask first (0 or the
    scale, one pass less), which is the same number: ``v * 1`` is exact, then ``* scale``."""
    if values.dtype == torch.float32:
        return torch.mul(values, mask.mul_(scale))
    return torch.mul(values, mask).mul_(scale)


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale``, saving the random lanes (2 bytes a value) for the backward pass.

    The multiplication is by a 0/1 mask in ``x``'s dtype rather than a boolean one: torch's CPU
    kernels convert a boolean operand value by value, and a product with a boolean mask took
    5-25x one with a float mask of the same shape (about 4% of a SmolLM2 step went there).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, lanes: torch.Tensor, threshold: int, scale: float
    ) -> torch.Tensor:
        ctx.save_for_backward(lanes)
        ctx.threshold = threshold
        ctx.scale = scale
        return _scaled(x, _mask(lanes, threshold, x.dtype), scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (lanes,) = ctx.saved_tensors
        return _scaled(grad, _mask(lanes, ctx.threshold, grad.dtype), ctx.scale), None, None, None


def random_lanes(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Uniform int16 values of ``shape`` from torch's global generator, four a 64-bit draw."""
    count = 1
    for size in shape:
        count *= size
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None)  # the full 64-bit range: four uniform 16-bit lanes
    return words.view(torch.int16)[:count].view(shape)


def keep_threshold(drop_lanes: int) -> int:
    """The lane value from which a value is kept: ``drop_lanes`` of the 65,536 fall below."""
    return -(LANES // 2) + drop_lanes


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
        lanes = random_lanes(x.shape, x.device)
        return _MaskedScale.apply(x, lanes, keep_threshold(self.drop_lanes), self.scale)

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
