"""Checks that run before any library opens a model file: nothing in a model may execute code.

* Pickle-capable weight files and code files are refused by name, never opened.
* ``auto_map`` in a JSON config (it names remote code to import) is refused.
* Every safetensors header is parsed here with ``struct`` and ``json`` and checked against the
  file size before safetensors or torch touch the file: a header that is malformed, oversized,
  or whose tensors point outside the file (e.g. a 100 GB tensor in a 1 KB file) is refused.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ModelImportError
from appliance.fsutil import FileTooLargeError, read_regular_file

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib"})
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib"})
MAX_HEADER_BYTES = 100_000_000
"""The same cap the safetensors library uses; a larger header is refused as oversized."""
MAX_CONFIG_BYTES = 256 * 1024**2
"""The largest JSON file of a model folder read for ``auto_map`` (tokenizer.json files reach
tens of MiB); a larger one is not a config."""

DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}
TORCH_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


@dataclass
class SafetensorsInfo:
    """What a checked safetensors header says."""

    path: Path
    tensors: int = 0
    parameters: int = 0
    elements_by_dtype: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)


def _refuse(path: Path, reason: str) -> ModelImportError:
    return ModelImportError(f"refused {path}: {reason}")


def check_safetensors(path: Path) -> SafetensorsInfo:
    """Parse and bounds-check the header of one ``.safetensors`` file.

    Raises:
        ModelImportError: naming the file and what is wrong with it.
    """
    size = path.stat().st_size
    if size < 8:
        raise _refuse(path, f"truncated safetensors file ({size} bytes, no header)")
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise _refuse(
                path,
                f"safetensors header claims {header_len} bytes, over the "
                f"{MAX_HEADER_BYTES}-byte limit (oversized or corrupt)",
            )
        if 8 + header_len > size:
            raise _refuse(
                path,
                f"safetensors header claims {header_len} bytes but the file has only "
                f"{size - 8} after the length field (truncated)",
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"malformed safetensors header (not JSON: {exc})") from None
    except RecursionError:  # "[[[[...": the decoder recurses once per level
        raise _refuse(path, "malformed safetensors header (JSON nested too deeply)") from None
    if not isinstance(header, dict):
        raise _refuse(path, "malformed safetensors header (not a JSON object)")
    data_size = size - 8 - header_len
    info = SafetensorsInfo(path)
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is not None and not (
                isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())
            ):
                raise _refuse(path, "malformed __metadata__ (must map strings to strings)")
            continue
        begin, end, elements, dtype = _check_entry(path, name, entry)
        if end > data_size:
            raise _refuse(
                path,
                f"tensor {name!r} points outside the file (bytes {begin}-{end} of a "
                f"{data_size}-byte data section)",
            )
        spans.append((begin, end, name))
        info.tensors += 1
        info.parameters += elements
        info.elements_by_dtype[dtype] = info.elements_by_dtype.get(dtype, 0) + elements
        info.names.append(name)
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps another tensor" if begin < position else "leaves a gap before it"
            raise _refuse(path, f"tensor {name!r} {what} (offset {begin}, expected {position})")
        position = end
    if position != data_size:
        raise _refuse(
            path,
            f"the data section has {data_size} bytes but the tensors cover {position} "
            "(extra or missing bytes)",
        )
    return info


def _check_entry(path: Path, name: str, entry: Any) -> tuple[int, int, int, str]:
    if not isinstance(entry, dict):
        raise _refuse(path, f"tensor {name!r} has a malformed header entry")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise _refuse(path, f"tensor {name!r} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _refuse(path, f"tensor {name!r} has a malformed shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _refuse(path, f"tensor {name!r} has malformed data_offsets {offsets!r}")
    elements = math.prod(shape)
    nbytes = elements * DTYPE_BITS[str(dtype)] // 8
    if offsets[1] - offsets[0] != nbytes:
        raise _refuse(
            path,
            f"tensor {name!r} of shape {shape} and dtype {dtype} needs {nbytes} bytes but its "
            f"offsets span {offsets[1] - offsets[0]}",
        )
    return int(offsets[0]), int(offsets[1]), elements, str(dtype)


def scan_folder(folder: Path) -> list[Path]:
    """Refuse a folder holding pickle weights, code, or ``auto_map``; return its files.

    Hidden entries (``.git``, ``.cache``) are not returned but are scanned for the same
    dangerous files, since a loader could still be pointed at them. Files that could run code
    are looked for first, so the most serious reason is the one reported.

    Raises:
        ModelImportError: naming the first offending file.
    """
    files: list[Path] = []
    configs: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            suffix = path.suffix.lower()
            if suffix in PICKLE_SUFFIXES:
                raise _refuse(
                    path,
                    f"{suffix} weights are pickle files, which can run code when loaded; only "
                    "safetensors or GGUF weights are accepted (remove it or convert the model)",
                )
            if suffix in CODE_SUFFIXES:
                raise _refuse(
                    path,
                    "model folders must not contain code (custom modelling code is never run; "
                    "remove it, or use a model transformers supports natively)",
                )
            if path.is_symlink() and not path.resolve().is_file():
                raise _refuse(path, "a symbolic link that does not point at a regular file")
            rel_parts = path.relative_to(folder).parts
            if any(part.startswith(".") for part in rel_parts):
                continue
            if not path.is_file():
                # A FIFO would block the copy forever (holding the writer lock); a device
                # would never end.
                raise _refuse(path, "not a regular file (a FIFO, device or socket)")
            if suffix == ".json" and len(rel_parts) == 1:
                configs.append(path)
            files.append(path)
    for path in configs:
        check_no_auto_map(path)
    return files


def check_no_auto_map(path: Path) -> None:
    """Refuse a JSON config whose ``auto_map`` names custom (remote) code."""
    try:
        data = json.loads(read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileTooLargeError as exc:
        raise _refuse(path, f"a JSON file of {exc.size:,} bytes; configs are far smaller") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"not valid JSON ({exc})") from None
    except RecursionError:
        raise _refuse(path, "not valid JSON (nested too deeply)") from None
    if isinstance(data, dict) and "auto_map" in data:
        raise _refuse(
            path,
            "it has an auto_map entry, which asks to run custom code from the model "
            "(trust_remote_code is never enabled; use a model transformers supports natively)",
        )


def check_gguf_magic(path: Path) -> None:
    """Refuse a file that does not start like a GGUF file."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise _refuse(path, "not a GGUF file (the first bytes are not 'GGUF')")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise _refuse(path, f"unsupported GGUF version {version} (2 and 3 are supported)")
