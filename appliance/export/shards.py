"""A streaming safetensors writer: one tensor in flight, never a second copy of the model.

``safetensors.torch.save_file`` serialises each tensor to a new ``bytes`` object first, so saving
a model briefly holds it twice. Here each tensor's own buffer is written straight to the file
(a zero-copy ``memoryview`` of its storage), which keeps the peak at one copy of the model plus
one tensor, and lets the caller report progress and cancel between tensors.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from appliance.export.options import check_cancel

if TYPE_CHECKING:
    import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _dtype_code(tensor: torch.Tensor) -> str:
    import torch

    codes = {
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.float64: "F64",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    return codes[tensor.dtype]


def tensor_buffer(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor without copying them (bf16 viewed as int16)."""
    import torch

    t = tensor.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the same bits
        t = t.view(torch.int16)
    array: Any = t.numpy()
    return memoryview(array).cast("B")


def _write(handle: IO[bytes], data: bytes | memoryview) -> None:
    # One place that writes weight bytes, so a test can simulate a full disk here.
    handle.write(data)


def distinct_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without tensors that share storage with an earlier one (tied embeddings).

    transformers re-ties them on load from the config, as ``save_pretrained`` expects.
    """
    seen: set[tuple[int, tuple[int, ...]]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor
    return out


def write_file(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    on_bytes: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Write one safetensors file; returns its size in bytes. fsyncs before returning."""
    header: dict[str, object] = {}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _dtype_code(tensor),
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "xb") as handle:
        _write(handle, len(raw).to_bytes(8, "little"))
        _write(handle, raw)
        for tensor in tensors.values():
            check_cancel(cancel)
            buffer = tensor_buffer(tensor)
            _write(handle, buffer)
            if on_bytes is not None:
                on_bytes(len(buffer))
        handle.flush()
        os.fsync(handle.fileno())
    return 8 + len(raw) + offset


def plan_shards(
    tensors: Mapping[str, torch.Tensor], max_shard_size: int
) -> list[dict[str, torch.Tensor]]:
    """Group tensors in order into shards of at most ``max_shard_size`` bytes each.

    A tensor larger than the limit gets a shard of its own, as transformers does.
    """
    shards: list[dict[str, torch.Tensor]] = [{}]
    current = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and current + size > max_shard_size:
            shards.append({})
            current = 0
        shards[-1][name] = tensor
        current += size
    return shards


def save_sharded(
    folder: Path,
    state: Mapping[str, torch.Tensor],
    max_shard_size: int,
    *,
    on_bytes: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[str]:
    """Save a model state dict as transformers lays it out; returns the files written.

    One ``model.safetensors`` when it fits in one shard, else ``model-0000i-of-0000n`` shards
    and ``model.safetensors.index.json`` mapping every tensor to its shard.
    """
    tensors = distinct_tensors(state)
    shards = plan_shards(tensors, max_shard_size)
    meta = {"format": "pt"}
    if len(shards) == 1:
        write_file(folder / SINGLE_FILE, shards[0], meta, on_bytes=on_bytes, cancel=cancel)
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    total = 0
    for file_name, shard in zip(names, shards, strict=True):
        total += sum(t.numel() * t.element_size() for t in shard.values())
        write_file(folder / file_name, shard, meta, on_bytes=on_bytes, cancel=cancel)
        weight_map.update(dict.fromkeys(shard, file_name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(folder / INDEX_FILE, "x", encoding="utf-8") as handle:
        handle.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*names, INDEX_FILE]
