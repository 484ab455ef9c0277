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
* and, between the parts of the decoder layers (attention, MLP, norms; in the forward pass and in
  its recompute under checkpointing), whenever the resident size has grown by
  :data:`TRIM_GROWTH` since the last trim. The dequantised 4-bit weights and each layer's
  temporaries leave holes in the heap that small long-lived blocks split, so each layer's
  buffers went to fresh pages: without trims the step's peak of SmolLM2 QLoRA was 1118-1135 MiB
  in one process, with a trim before every part 939-955 MiB. But a trim hands back the pages the
  next layer needs again at once, and refaulting them cost 25-30% of the step's CPU time; a trim
  only once the heap has grown by 64 MiB (about every other layer for SmolLM2 at 4 x 60 tokens,
  every layer for larger models) keeps the peak at 964 MiB for about a third of that cost
  (docs/benchmarks.md, "CPU memory"). Near the top, within :data:`TRIM_NEAR_TOP` of the highest
  size a trim has left, less growth suffices: only there does the slack add to the peak.

Elsewhere than glibc (or where ``libc.so.6`` cannot be loaded) both are no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

log = logging.getLogger("appliance.training")

M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter number (glibc malloc.h)."""
LOADING_THRESHOLD = 128 * 1024
"""glibc's initial threshold, kept fixed while loading."""
TRAINING_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest dynamic threshold (64-bit), where it settles during training anyway."""
TRIM_GROWTH = 64 * 1024 * 1024
"""Resident growth since the last trim that triggers one between layer parts (measured: 16, 32,
64, 96, 128 MiB; docs/benchmarks.md)."""
TRIM_NEAR_TOP = 32 * 1024 * 1024
"""Growth above the highest size a trim has left that triggers one (the peak's own slack;
measured in one process: 16 MiB and 32 MiB gave the same peak, 32 MiB with a third fewer trims)."""


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


def resident_reader() -> Callable[[], int | None]:
    """A function that returns this process's resident bytes (``/proc/self/statm``, one
    ``pread`` of a file kept open: a few microseconds), or None where that cannot be read."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        return lambda: None
    page = os.sysconf("SC_PAGE_SIZE")

    def read() -> int | None:
        try:
            return int(os.pread(fd, 64, 0).split()[1]) * page
        except (OSError, ValueError, IndexError):
            return None

    return read


class GrowthTrimmer:
    """Trims the heap when the resident size has grown by ``threshold`` bytes since the last
    trim, or by ``near_top`` bytes above the highest size a trim has left (the process's peak).

    The second rule bounds what freed memory can add to the peak: a step's live memory climbs to
    about the same level each step (the kept activations at the end of the forward pass), and
    only there does a trim lower the peak; lower down, trims cost refaults and save nothing the
    peak needs. A fall in the resident size (the trim after each optimizer step, memory handed
    back by freeing) lowers the mark. Where the resident size cannot be read, every call trims.
    """

    def __init__(
        self,
        threshold: int = TRIM_GROWTH,
        resident: Callable[[], int | None] | None = None,
        near_top: int = TRIM_NEAR_TOP,
    ) -> None:
        self.threshold = threshold
        self.near_top = near_top
        self.trims = 0
        self._resident = resident or resident_reader()
        self._mark = self._resident()
        self._top = self._mark

    def maybe_trim(self) -> bool:
        """Trim if the resident size grew by the threshold since the mark or came near the top
        above the highest level after a trim; True if it trimmed."""
        now = self._resident()
        if (
            now is not None
            and self._mark is not None
            and self._top is not None
            and now - self._mark <= self.threshold
            and now - self._top <= self.near_top
        ):
            self._mark = min(self._mark, now)
            return False
        trim()
        self.trims += 1
        self._mark = self._resident()
        if self._mark is not None:
            self._top = max(self._top or 0, self._mark)
        return True

    def __call__(self, _module: Any, _args: Any) -> None:
        """A forward pre-hook; returns None so the module's arguments stay as they are."""
        self.maybe_trim()


def trim_between_layers(
    model: Any,
    threshold: int = TRIM_GROWTH,
    resident: Callable[[], int | None] | None = None,
) -> GrowthTrimmer | None:
    """Trim the heap between the parts of ``model``'s decoder layers once it has grown.

    The decoder layers are transformers' ``GradientCheckpointingLayer`` modules. Their own
    hooks stay outside the checkpoint (transformers checkpoints ``forward``, not the call), so
    the hook goes on each layer's children, which run again in the recompute of the backward
    pass. Returns the trimmer (its ``trims`` counts them), None where glibc is not there or
    the model has no such layers.
    """
    if _libc() is None:
        return None
    from transformers.modeling_layers import GradientCheckpointingLayer

    parts = [
        child
        for module in model.modules()
        if isinstance(module, GradientCheckpointingLayer)
        for child in module.children()
    ]
    if not parts:
        return None
    trimmer = GrowthTrimmer(threshold, resident)
    for part in parts:
        part.register_forward_pre_hook(trimmer)
    return trimmer
