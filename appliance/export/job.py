"""The ``export`` job: :func:`export_adapter` in a child process, for the desktop app.

The same code path as ``appliance export``; the parent builds the request with
:meth:`appliance.export.preflight.ExportPlan.request`, which hands over the adapter's data key
(the only vault object an export reads) and the audit key (it records the export). Cancel is
the job's SIGTERM: the staging folder is removed by the export's own cleanup, and once the
verified export starts to be published (rename, then registry row) a cancel is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.errors import UsageError
from appliance.export.options import ExportOptions, VerificationFailedError
from appliance.export.pipeline import export_adapter

if TYPE_CHECKING:
    from appliance.jobs.child import JobContext


def _required(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"export's {key!r} must be a non-empty string")
    return value


def _optional(params: dict[str, Any], key: str) -> str | None:
    return None if params.get(key) is None else _required(params, key)


def export_job(ctx: JobContext) -> dict[str, Any]:
    """Export an adapter version, reporting each stage; the figures are the result.

    Params:
        adapter (str): ``NAME@N`` (or ``NAME``, ``NAME@TAG``).
        format (str): ``merged``, ``adapter`` or ``gguf``.
        out (str): the destination folder.
        dtype (str, optional), gguf_type (str, optional), max_shard_size (int or str,
        optional), force (bool, default false): as the CLI's options.

    Progress stages: checking, loading, reference, merging, writing (bytes), verifying,
    finishing. A failed verification first sends an ``output`` event ``{"verification":
    figures}``, then fails with the CLI's message.

    Returns:
        The export record (:meth:`ExportResult.to_json`): id, adapter, format, path, files,
        bytes, sha256, verification figures, details and warnings.

    Raises:
        UsageError: a parameter missing or of the wrong type.
    """
    params = ctx.params
    ref = _required(params, "adapter")
    force = params.get("force", False)
    if not isinstance(force, bool):
        raise UsageError("export's 'force' must be true or false")
    shard = params.get("max_shard_size")
    if shard is not None and not isinstance(shard, int | str):
        raise UsageError("export's 'max_shard_size' must be a size")
    options = ExportOptions.checked(
        _required(params, "format"),
        _required(params, "out"),
        dtype=_optional(params, "dtype"),
        gguf_type=_optional(params, "gguf_type"),
        max_shard_size=shard,
        force=force,
    )
    with ctx.registry() as reg:
        try:
            result = export_adapter(ctx.keys, reg, ref, options, progress=ctx.progress)
        except VerificationFailedError as exc:
            ctx.output(verification=exc.figures)
            raise
    return result.to_json()
