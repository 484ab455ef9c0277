"""``appliance export``: merged safetensors, PEFT adapter or GGUF + Modelfile, verified."""

from __future__ import annotations

from pathlib import Path

import typer

from appliance.cli.context import err, out, print_json, state
from appliance.cli.progress import stage_progress
from appliance.progress import EXPORT_STAGES


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.command("export")(export)


def export(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Adapter version: NAME, NAME@N or NAME@TAG."),
    format: str = typer.Option(
        ..., "--format", "-f", help="merged (safetensors), adapter (PEFT) or gguf (+ Modelfile)."
    ),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Destination folder (created)."),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="bf16, fp16 or fp32 to merge in (default: bf16 merged, fp32 gguf, adapter as is).",
    ),
    gguf_type: str | None = typer.Option(
        None, "--gguf-type", help="GGUF matrices: f16, q8_0 (default) or q4_0."
    ),
    max_shard_size: str | None = typer.Option(
        None, "--max-shard-size", help="Largest safetensors shard, e.g. 500MB or 5GB (merged)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an earlier export at --out (only files its MANIFEST lists are removed).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the export record as JSON."),
) -> None:
    """Export an adapter for local serving, verified against the unmerged model."""
    from appliance.export import ExportOptions, export_adapter
    from appliance.export.verify import verification_line

    options = ExportOptions.checked(
        format,
        out_dir,
        dtype=dtype,
        gguf_type=gguf_type,
        max_shard_size=max_shard_size,
        force=force,
    )
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with st.registry(ws) as reg, stage_progress(EXPORT_STAGES) as callback:
        result = export_adapter(vault, reg, ref, options, progress=callback)
    if json_out:
        print_json(result.to_json())
        return
    for warning in result.warnings:
        err.print(f"warning: {warning}")
    what: str = options.format
    if options.format == "gguf":
        what = f"GGUF {options.gguf_type.upper()}"
    elif result.details.get("dtype"):
        what = f"{options.format} {result.details['dtype']}"
    out.print(
        f"Exported {result.ref} as {what} to {result.path} "
        f"({len(result.files)} files, {result.bytes / 1024**2:.1f} MiB)"
    )
    out.print(f"Verified: {verification_line(result.verification)}")
