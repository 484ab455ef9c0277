"""Keep the CPU training process's resident memory close to what its tensors need (glibc).

On the CPU, peak RSS, not the tensors, decided the demo model's memory: its training step needs
about 50 MB above the loaded model (measured with ``mallinfo2``), yet RSS grew by 400-800 MB.
glibc's allocator raises its mmap threshold each time a large block is freed, so after the first
few frees, buffers of up to 32 MB (dequantised weights, activations, the bf16-to-fp32 copies made
while loading) come from the heap, and freed heap memory stays resident. Two measures:

* while the model loads, a fixed 128 KiB mmap threshold: every converted weight lives in its own
  mapping and is returned the moment it is freed (the load peak of SmolLM2 QLoRA fell from
  1180 to 906 MB). During training the same setting costs 30-40% of the step time in page faults,
  so it is lifted when loading ends;
* after loading and after each optimizer step, ``malloc_trim(0)`` hands free heap pages back
  (RSS after steps: 1098 -> 736 MB, no measurable time);
* and before each part of a decoder layer runs (attention, MLP, norms; in the forward pass and
  in its recompute under checkpointing): the dequantised 4-bit weights (0.4-3.5 MB each) leave
  holes in the heap that small long-lived blocks split, so each layer's buffers went to fresh
  pages and a step ended with 250-300 MB freed but resident. Trimming there took the step's
  peak of SmolLM2 QLoRA from 924-952 to 738-753 MiB at no measurable cost (step CPU time
  20.6-20.8 s against 20-22 s; docs/benchmarks.md, "CPU memory").

Elsewhere than glibc (or where ``libc.so.6`` cannot be loaded) both are no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator
from functools import cache
from typing import Any

log = logging.getLogger("appliance.training")

M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter number (glibc malloc.h)."""
LOADING_THRESHOLD = 128 * 1024
"""glibc's initial threshold, kept fixed while loading."""
TRAINING_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest dynamic threshold (64-bit), where it settles during training anyway."""


@cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Return free heap memory to the OS; False where glibc is not there."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Freed buffers go straight back to the OS while this block runs (model loading)."""
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, LOADING_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, TRAINING_THRESHOLD)
        libc.malloc_trim(0)


def _trim_hook(_module: Any, _args: Any) -> None:
    trim()


def trim_between_layers(model: Any) -> int:
    """Return free heap pages before each part of each of ``model``'s decoder layers runs.

    The decoder layers are transformers' ``GradientCheckpointingLayer`` modules. Their own
    hooks stay outside the checkpoint (transformers checkpoints ``forward``, not the call), so
    the hook goes on each layer's children, which run again in the recompute of the backward
    pass. Returns the number of modules hooked (0 where glibc is not there).
    """
    if _libc() is None:
        return 0
    from transformers.modeling_layers import GradientCheckpointingLayer

    parts = [
        child
        for module in model.modules()
        if isinstance(module, GradientCheckpointingLayer)
        for child in module.children()
    ]
    for part in parts:
        part.register_forward_pre_hook(_trim_hook)
    return len(parts)
