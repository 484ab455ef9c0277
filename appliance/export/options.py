"""What an export is asked to do, checked before anything is loaded or written."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ExportError, UsageError

FORMATS = ("merged", "adapter", "gguf")
DTYPES = ("bf16", "fp16", "fp32")
GGUF_TYPES = ("f16", "q8_0", "q4_0")
DEFAULT_SHARD_SIZE = 2 * 1024**3

Progress = Callable[[int, int, str], None]
"""``progress(done, total, stage)``. Stages, in order: checking, loading, reference, merging,
writing, verifying, finishing. ``total`` 0 means unknown; during writing they count bytes."""


class ExportCancelledError(ExportError):
    """The export was cancelled by the user; nothing was left behind."""


class VerificationFailedError(ExportError):
    """The written export did not compute what the adapter computes; its files were removed.

    :attr:`figures` are the measured figures (as :func:`appliance.export.verify.compare` gives
    them), for a view that shows them beside the message.
    """

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


@dataclass(frozen=True)
class ExportOptions:
    """One export request. Build it with :meth:`checked`, which validates every field."""

    format: str
    """``merged`` (safetensors folder), ``adapter`` (PEFT folder) or ``gguf`` (+ Modelfile)."""
    out: Path
    """The destination folder, created by the export (absolute)."""
    dtype: str | None = None
    """Precision of the base while merging and of the written weights. ``None`` picks bf16 for
    merged, fp32 for gguf (the GGUF type sets the file's precision; merging in fp32 keeps bf16
    rounding out of it, at twice the RAM) and the adapter's own precision for adapter."""
    gguf_type: str = "q8_0"
    """Type of the GGUF matrices: ``f16``, ``q8_0`` or ``q4_0`` (norms stay F32)."""
    max_shard_size: int = DEFAULT_SHARD_SIZE
    """Largest safetensors shard of a merged export, in bytes."""
    force: bool = False
    """Replace an earlier export at ``out`` (a folder whose ``MANIFEST`` lists everything in
    it), once the new export verified; only its listed files are removed. Any other non-empty
    folder is refused, with or without it (:mod:`appliance.destinations`)."""

    @classmethod
    def checked(
        cls,
        format: str,
        out: Path | str,
        *,
        dtype: str | None = None,
        gguf_type: str | None = None,
        max_shard_size: str | int | None = None,
        force: bool = False,
    ) -> ExportOptions:
        """Validate and normalise the options.

        Raises:
            UsageError: an option has a value outside its choices; the message lists them.
        """
        fmt = format.lower()
        if fmt not in FORMATS:
            raise UsageError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
        if dtype is not None and dtype.lower() not in DTYPES:
            raise UsageError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if gguf_type is not None:
            if fmt != "gguf":
                raise UsageError("--gguf-type only applies to --format gguf")
            if gguf_type.lower() not in GGUF_TYPES:
                raise UsageError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
        if max_shard_size is not None and fmt != "merged":
            raise UsageError("--max-shard-size only applies to --format merged")
        shard = DEFAULT_SHARD_SIZE if max_shard_size is None else parse_size(max_shard_size)
        return cls(
            format=fmt,
            out=Path(out).expanduser().absolute(),
            dtype=dtype.lower() if dtype else None,
            gguf_type=(gguf_type or "q8_0").lower(),
            max_shard_size=shard,
            force=force,
        )

    @property
    def weights_dtype(self) -> str | None:
        """The dtype the base is loaded and merged in (``None``: the adapter keeps its own)."""
        if self.dtype is not None:
            return self.dtype
        return {"merged": "bf16", "gguf": "fp32"}.get(self.format)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: str | int) -> int:
    """``"500MB"``, ``"2GiB"``, ``"1G"`` or a number of bytes (units are powers of 1024).

    Raises:
        UsageError: not a size, or smaller than 1 MiB.
    """
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if not match:
            raise UsageError(
                f"--max-shard-size {value!r} is not a size; write e.g. 500MB, 2GB or 5GiB"
            )
        unit = (match.group(2) or "").upper().rstrip("B").rstrip("I")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1024**2:
        raise UsageError(f"--max-shard-size {value!r} is below 1 MiB; give at least 1MB")
    return size


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`ExportCancelledError` when ``cancel`` is set (polled between steps)."""
    if cancel is not None and cancel.is_set():
        raise ExportCancelledError("export cancelled; nothing was written to the destination")
