"""Before an export starts: is the destination usable, how big will it be, will it fit.

Everything here reads the registry and the file system only (no torch, no weights), so the
desktop app can show the expected size and free space as the user fills the form, and refuse
an export that cannot succeed before a child process is started. The export itself
(:func:`appliance.export.export_adapter`) runs the same checks again when it starts, since the
disk and the registry may change in between.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.destinations import check_export_folder
from appliance.errors import ExportError
from appliance.export.options import ExportOptions
from appliance.jobs.request import JobRequest
from appliance.registry import Registry
from appliance.units import format_bytes
from appliance.vault.objects import object_id_of

if TYPE_CHECKING:
    from appliance.vault import Vault

BYTES_PER_PARAM = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "f16": 2.0, "q8_0": 1.07, "q4_0": 0.6}
"""Bytes a weight takes on disk in each export dtype or GGUF type (Q8_0/Q4_0 with their scales)."""
OVERHEAD_BYTES = 16 << 20
"""Headers, tokenizer, model card and MANIFEST on top of the weights of a merged or GGUF export."""
ADAPTER_OVERHEAD_BYTES = 1 << 20
"""Config, model card and MANIFEST on top of an adapter's tensors."""
ADAPTER_FILE = "adapter.enc"
"""The encrypted weights in an adapter version's folder (see :mod:`appliance.adapters`)."""


def estimate_bytes(
    format: str, *, parameters: int, dtype: str, gguf_type: str, adapter_bytes: int
) -> int:
    """About how many bytes an export writes.

    Args:
        format: ``merged``, ``adapter`` or ``gguf``.
        parameters: the base model's parameter count.
        dtype: the precision a merged export is written in.
        gguf_type: the GGUF matrices' type.
        adapter_bytes: the adapter's tensors in bytes (its encrypted file's size is close).
    """
    if format == "adapter":
        return adapter_bytes + ADAPTER_OVERHEAD_BYTES
    per = BYTES_PER_PARAM[gguf_type if format == "gguf" else dtype]
    return int(parameters * per * 1.02) + OVERHEAD_BYTES


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(shutil.disk_usage(probe).free)


@dataclass(frozen=True)
class Space:
    """What an export needs against what the destination's file system has."""

    need: int
    """Estimated bytes the export writes."""
    free: int
    """Free bytes where it writes."""
    folder: Path
    """The folder the export is written in (the destination's parent)."""

    @property
    def fits(self) -> bool:
        return self.free >= self.need

    def describe(self) -> str:
        """E.g. "about 140.2 MiB needed, 51.0 GiB free in /srv/models"."""
        return (
            f"about {format_bytes(self.need)} needed, {format_bytes(self.free)} free in "
            f"{self.folder}"
        )


def check_space(folder: Path, need: int) -> Space:
    """The space an export of ``need`` bytes would find in ``folder``.

    Raises:
        ExportError: it will not fit; the message gives both figures.
    """
    space = Space(need=need, free=free_bytes(folder), folder=folder)
    if not space.fits:
        raise ExportError(
            f"not enough disk space in {folder}: the export needs about {format_bytes(need)} "
            f"and {format_bytes(space.free)} are free; free some space or choose another "
            "destination"
        )
    return space


@dataclass(frozen=True)
class ExportPlan:
    """An export that passed every check that needs no weights: what it will write where."""

    ref: str
    """The adapter version, ``NAME@N``."""
    options: ExportOptions
    base_model: str
    """The base model it is merged into (its name in the workspace)."""
    adapter_path: Path
    """The adapter version's encrypted weights (the one vault object the export job reads)."""
    space: Space

    @property
    def out(self) -> Path:
        return self.options.out

    def params(self) -> dict[str, Any]:
        """The ``export`` job's parameters (see :func:`appliance.export.job.export_job`)."""
        options = self.options
        return {
            "adapter": self.ref,
            "format": options.format,
            "out": str(options.out),
            "dtype": options.dtype,
            "gguf_type": options.gguf_type if options.format == "gguf" else None,
            "max_shard_size": options.max_shard_size if options.format == "merged" else None,
            "force": options.force,
        }

    def request(self, vault: Vault) -> JobRequest:
        """The ``export`` job for this plan: it is handed the adapter's data key (and no
        other) and the audit key, since it records the export.

        Raises:
            IntegrityError: the adapter's file is missing or not a vault object.
        """
        what = f"adapter {self.ref}"
        object_id = object_id_of(self.adapter_path, what)
        return JobRequest.for_vault(
            vault,
            "export",
            self.params(),
            objects=[(self.adapter_path, object_id, what)],
            writes_registry=True,
        )


def plan_export(reg: Registry, ref: str, options: ExportOptions) -> ExportPlan:
    """Check an export of adapter version ``ref`` without loading anything heavy.

    Raises:
        DestinationError: the destination is refused (:mod:`appliance.destinations`: the same
            check as the export's).
        NotFoundError: no such adapter version (or it was deleted).
        ExportError: the version has no base model in its lineage, or the export will not fit
            on the disk.
    """
    ws = reg.ws
    out = check_export_folder(options.out, force=options.force, workspace_home=ws.home)
    options = dataclasses.replace(options, out=out)
    record = reg.adapters.version(ref)
    lineage = reg.adapters.lineage(record["ref"])
    base = lineage["base_model"]
    if base is None:
        raise ExportError(
            f"adapter {record['ref']} has no base model in its lineage (no training run "
            "recorded), so it cannot be merged or verified"
        )
    adapter_path = ws.home / record["path"] / ADAPTER_FILE
    try:
        adapter_bytes = adapter_path.stat().st_size
    except FileNotFoundError:
        adapter_bytes = 0  # the export itself reports the missing file with what to do
    need = estimate_bytes(
        options.format,
        parameters=int(base.get("parameters") or 0),
        dtype=options.weights_dtype or "fp32",
        gguf_type=options.gguf_type,
        adapter_bytes=adapter_bytes,
    )
    space = check_space(options.out.parent, need)
    return ExportPlan(record["ref"], options, base["name"], adapter_path, space)
