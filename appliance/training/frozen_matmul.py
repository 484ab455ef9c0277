"""The frozen base's projections on the CPU: one reused buffer for 4-bit weights, and their
outputs kept across gradient checkpointing without a dispatch mode.

Two costs of a CPU QLoRA step sat around the base model's matmuls rather than in them:

- **Dequantised weights.** bitsandbytes dequantises a 4-bit weight into a fresh buffer for every
  forward and every input gradient (0.4-3.5 MB a projection for SmolLM2, 14 a layer). Each fresh
  buffer is page faults, and the holes the freed buffers leave in the heap are what made the
  heap grow layer by layer until it was trimmed (:mod:`.allocator`). Here the weight is
  dequantised by bitsandbytes' own CPU kernel into one buffer per thread and dtype, reused by
  every projection: it is read by the matmul and never handed out, so it is free again as soon
  as the matmul returns.
- **Selective recompute's dispatch mode.** PyTorch's selective checkpointing decides per
  operator, in Python, for every operator of the checkpointed layers (about 400 a layer and
  step), what to keep. Here only the frozen projections take part: their outputs are recorded
  in the layer's forward and handed back, in the same order, when the backward pass recomputes
  the layer; everything else is recomputed as under full checkpointing. A recorded output that
  does not match (another layer, another shape, changed in place since) is computed again.

The numbers are bitsandbytes' and torch's: the same dequantisation kernel, ``linear`` and, for
the input gradient, ``grad @ W`` (tests compare outputs and gradients with the stock layers).
Neither function saves a tensor for the backward pass: the weight is read again there, as
bitsandbytes does, so the layer's forward and its recompute save the same tensors.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

_local = threading.local()

DEQUANTISERS = {
    ("nf4", torch.float32): "cdequantize_blockwise_cpu_nf4_fp32",
    ("nf4", torch.bfloat16): "cdequantize_blockwise_cpu_nf4_bf16",
    ("nf4", torch.float16): "cdequantize_blockwise_cpu_nf4_fp16",
    ("fp4", torch.float32): "cdequantize_blockwise_cpu_fp4_fp32",
    ("fp4", torch.bfloat16): "cdequantize_blockwise_cpu_fp4_bf16",
    ("fp4", torch.float16): "cdequantize_blockwise_cpu_fp4_fp16",
}
"""bitsandbytes' CPU kernels that dequantise a 4-bit weight into a caller's buffer, by quant
type and dtype: the ones its registered ``dequantize_4bit`` CPU operator calls."""
LARGEST_KERNEL_BLOCK = 1024
"""bitsandbytes falls back to its generic dequantisation for blocks of 2,048 and more."""


def _scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """This thread's reused buffer of at least ``numel`` values of ``dtype``."""
    buffers: dict[torch.dtype, torch.Tensor] | None = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]


def _absmax(state: Any) -> torch.Tensor:
    """The blocks' fp32 scales, as bitsandbytes computes them (double quantisation undone)."""
    if state.nested:
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            state.absmax, state.state2.absmax, state.state2.code, state.state2.blocksize,
            torch.float32,
        )  # fmt: skip
        return absmax + state.offset
    return state.absmax if state.absmax.dtype == torch.float32 else state.absmax.float()


@functools.cache
def _kernel(quant_type: str, dtype: torch.dtype) -> Any:
    """bitsandbytes' CPU kernel for ``quant_type`` into ``dtype``, or None where this build of
    bitsandbytes has none."""
    name = DEQUANTISERS.get((quant_type, dtype))
    try:
        from bitsandbytes.cextension import lib

        return None if name is None else getattr(lib, name, None)
    except (ImportError, RuntimeError):  # no native library: bitsandbytes' own path decides
        return None


def dequantised(weight: torch.Tensor, state: Any, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` as an ``[out, in]`` matrix of ``dtype``, in this thread's reused buffer.

    The buffer is overwritten by the next call on this thread: use the result at once."""
    from bitsandbytes.functional import get_ptr

    rows, columns = state.shape
    packed = weight if weight.dtype == torch.uint8 else weight.view(torch.uint8)
    out = _scratch(rows * columns, dtype).view(rows, columns)
    absmax = _absmax(state)
    _kernel(state.quant_type, dtype)(
        get_ptr(packed), get_ptr(absmax), get_ptr(out),
        ctypes.c_longlong(state.blocksize), ctypes.c_longlong(rows), ctypes.c_longlong(columns),
    )  # fmt: skip
    return out


@functools.cache
def _params_4bit() -> type:
    from bitsandbytes.nn import Params4bit

    return Params4bit


def _is_4bit(weight: Any) -> bool:
    return isinstance(weight, _params_4bit())


def supports(layer: Any) -> bool:
    """Whether ``layer`` is a frozen 4-bit linear layer :func:`dequantised` can serve."""
    weight = getattr(layer, "weight", None)
    state = getattr(weight, "quant_state", None)
    return (
        state is not None
        and weight is not None
        and not weight.requires_grad
        and weight.device.type == "cpu"
        and len(state.shape) == 2
        and state.shape[-1] % 2 == 0
        and state.blocksize <= LARGEST_KERNEL_BLOCK
        and _kernel(state.quant_type, state.dtype) is not None
        and not getattr(state, "packing_format_for_cpu", False)
        and (not state.nested or state.state2.blocksize == 256)
    )


def _weight(layer: Any, dtype: torch.dtype) -> torch.Tensor:
    """``layer``'s ``[out, in]`` weight in ``dtype``: dequantised into the reused buffer where
    it is 4-bit (bitsandbytes' own dequantisation for a dtype its CPU kernels lack)."""
    weight = layer.weight
    state = getattr(weight, "quant_state", None)
    if state is None:
        return weight if weight.dtype == dtype else weight.to(dtype)
    if _kernel(state.quant_type, dtype) is None:
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(weight, state).to(dtype)
    return dequantised(weight, state, dtype)


class _Frozen4bit(torch.autograd.Function):
    """``x @ W^T + b`` by a 4-bit weight; the input gradient ``grad @ W`` (nothing saved)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Any) -> torch.Tensor:
        ctx.layer = layer
        weight = dequantised(layer.weight, layer.weight.quant_state, x.dtype)
        return F.linear(x, weight, layer.bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return torch.matmul(grad, _weight(ctx.layer, grad.dtype)), None


class _Frozen16(torch.autograd.Function):
    """``x @ W^T + b`` by a frozen 16/32-bit weight; the input gradient ``grad @ W``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Any) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.weight, layer.bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return torch.matmul(grad, _weight(ctx.layer, grad.dtype)), None


class _Replayed(torch.autograd.Function):
    """A recorded output handed back in the recompute, with the input gradient of the
    projection that made it (its backward is that projection's)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Any, output: list[torch.Tensor]) -> Any:
        del x  # an input only so that the output's gradient reaches it
        ctx.layer = layer
        return output.pop()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return torch.matmul(grad, _weight(ctx.layer, grad.dtype)), None, None


@dataclass
class _Record:
    layer: Any
    shape: torch.Size
    output: torch.Tensor | None
    version: int


class KeptOutputs:
    """The frozen projections' outputs of one checkpointed call, in the order they ran."""

    def __init__(self) -> None:
        self.records: list[_Record] = []
        self.position = 0
        self.replaying = False
        self.missed = 0
        """Recorded outputs that could not be handed back (computed again instead)."""

    def record(self, layer: Any, x: torch.Tensor, output: torch.Tensor) -> None:
        kept = output.detach()  # shares the version counter: changes in place are seen
        self.records.append(_Record(layer, x.shape, kept, kept._version))

    def take(self, layer: Any, x: torch.Tensor) -> torch.Tensor | None:
        """The output recorded for this call of ``layer``, or None (then compute it)."""
        if self.position >= len(self.records):
            self.missed += 1
            return None
        record = self.records[self.position]
        self.position += 1
        output, record.output = record.output, None  # the graph holds it from here on
        if (
            output is None
            or record.layer is not layer
            or record.shape != x.shape
            or output._version != record.version
        ):
            self.missed += 1
            return None
        return output


class Active:
    """Makes ``kept`` the store of this thread's frozen projections while entered: they record
    into it, or (``replaying``) take their outputs back from it."""

    def __init__(self, kept: KeptOutputs, replaying: bool) -> None:
        self.kept = kept
        self.replaying = replaying
        self._previous: KeptOutputs | None = None

    def __enter__(self) -> KeptOutputs:
        self._previous = getattr(_local, "kept", None)
        self.kept.replaying = self.replaying
        self.kept.position = 0
        _local.kept = self.kept
        return self.kept

    def __exit__(self, *exc: object) -> None:
        _local.kept = self._previous


def context_fn() -> tuple[Active, Active]:
    """The (forward, recompute) contexts of one checkpointed call (``checkpoint``'s
    ``context_fn``): the forward records the frozen projections' outputs, the recompute takes
    them back."""
    kept = KeptOutputs()
    return Active(kept, False), Active(kept, True)


def frozen_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``layer``'s forward through :class:`_Frozen4bit` or :class:`_Frozen16`, its output
    recorded or handed back inside a checkpointed call; the stock forward otherwise."""
    four_bit = _is_4bit(layer.weight)
    if (
        args
        or kwargs
        or torch.is_autocast_enabled()
        or layer.weight.requires_grad  # its gradient is torch's own to compute
        or (layer.bias is not None and layer.bias.requires_grad)
        or (four_bit and not supports(layer))
        or x.dtype != (layer.weight.quant_state.dtype if four_bit else layer.weight.dtype)
        or getattr(layer, "compute_dtype", None) not in (None, x.dtype)
        or (layer.bias is not None and layer.bias.dtype != x.dtype)
    ):
        return type(layer).forward(layer, x, *args, **kwargs)
    kept: KeptOutputs | None = getattr(_local, "kept", None)
    if kept is not None and kept.replaying:
        output = kept.take(layer, x)
        if output is not None:
            return _Replayed.apply(x, layer, [output])
    function: Callable[..., torch.Tensor] = (_Frozen4bit if four_bit else _Frozen16).apply
    output = function(x, layer)
    if kept is not None and not kept.replaying:
        kept.record(layer, x, output)
    return output


def use_frozen_matmuls(model: torch.nn.Module) -> int:
    """Give :func:`frozen_forward` to every frozen linear layer of ``model`` that is 4-bit or
    inside a checkpointed decoder layer (LoRA's base layers and the projections it leaves
    alone); returns how many."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    targets: dict[torch.nn.Module, None] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and _is_4bit(module.weight):
            targets[module] = None
        elif isinstance(module, GradientCheckpointingLayer):
            for inner in module.modules():
                if isinstance(inner, torch.nn.Linear) and not inner.weight.requires_grad:
                    targets[inner] = None
    for module in targets:
        module.forward = types.MethodType(frozen_forward, module)
    return len(targets)
