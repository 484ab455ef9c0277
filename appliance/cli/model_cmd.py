"""``appliance model import|list|show``: base models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from appliance.cli.context import out, print_json, state
from appliance.cli.progress import stage_progress
from appliance.demo import DEMO_MODEL_NAME, demo_model_gguf
from appliance.errors import UsageError
from appliance.progress import MODEL_IMPORT_STAGES
from appliance.registry.base_models import BASE_MODEL_FIELDS
from appliance.registry.rows import BaseModelRow
from appliance.units import format_bytes, format_count

model_app = typer.Typer(
    name="model",
    help="Base models: import a safetensors folder or a GGUF file, list, show.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(model_app)


def _public(model: BaseModelRow, *, manifest: bool) -> dict[str, Any]:
    row = {k: v for k, v in model.items() if k not in ("id", "deleted_at")}
    if not manifest:
        row.pop("manifest", None)
    return row


@model_app.command("import")
def import_(
    ctx: typer.Context,
    path: Path | None = typer.Argument(
        None, help="A Hugging Face model folder or a .gguf file (or --demo)."
    ),
    name: str | None = typer.Option(None, "--name", help="Name of the model in the workspace."),
    demo: bool = typer.Option(
        False,
        "--demo",
        help=f"Import the bundled SmolLM2-135M-Instruct as {DEMO_MODEL_NAME} (or --name).",
    ),
    link: bool = typer.Option(
        False, "--link", help="Reference the folder in place (hashes re-checked before each use)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the imported model as JSON."),
) -> None:
    """Import a base model: safetensors folder (copied, or --link) or GGUF file (converted)."""
    from appliance.models import import_model

    if demo:
        if path is not None:
            raise UsageError("give either PATH or --demo, not both")
        path, name = demo_model_gguf(), name or DEMO_MODEL_NAME
    if path is None:
        raise UsageError("give the model folder or .gguf file to import (or --demo)")
    if name is None:
        raise UsageError("give the model's name in the workspace with --name NAME")
    st = state(ctx)
    ws = st.workspace()
    with st.registry(ws) as reg, stage_progress(MODEL_IMPORT_STAGES) as callback:
        model = import_model(ws, reg, path, name, link=link, progress=callback)
    if json_out:
        print_json(_public(model, manifest=False))
        return
    how = "linked in place" if model["linked"] else f"copied to {ws.home / model['path']}"
    out.print(
        f"Imported {model['name']}: {model['architecture']}, "
        f"{format_count(model['parameters'])} parameters, {model['dtype']}, "
        f"{format_bytes(model['total_bytes'])}, {how}"
    )


@model_app.command("list")
def list_(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """List base models."""
    st = state(ctx)
    with st.registry(st.workspace(), unlock=False, readonly=True) as reg:
        models = reg.models.all()
    if json_out:
        print_json([_public(m, manifest=False) for m in models])
        return
    if not models:
        out.print("No base models yet; import one with 'appliance model import PATH --name NAME'.")
        return
    table = Table(
        "name", "architecture", "parameters", "dtype", "context", "chat", "size", "stored"
    )
    for m in models:
        table.add_row(
            m["name"],
            m["architecture"],
            format_count(m["parameters"]),
            m["dtype"] or "-",
            str(m["context_length"] or "-"),
            "yes" if m["has_chat_template"] else "no",
            format_bytes(m["total_bytes"]),
            "linked" if m["linked"] else "copy",
        )
    out.print(table)


@model_app.command("show")
def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a base model, its file manifest and the adapters trained on it."""
    st = state(ctx)
    with st.registry(st.workspace(), unlock=False, readonly=True) as reg:
        model = reg.models.get(name)
        adapters = [a["ref"] for a in reg.adapters.from_base_model(name)]
    if json_out:
        print_json({**_public(model, manifest=True), "adapters": adapters})
        return
    table = Table(show_header=False, box=None)
    fields = [f for f in BASE_MODEL_FIELDS if f != "manifest"]  # counted as "files" below
    for key in ("name", *fields, "created_at", "created_by"):
        value: Any = model.get(key)
        if key == "parameters":
            value = f"{value} ({format_count(value)})"
        elif key == "total_bytes":
            value = f"{value} ({format_bytes(value)})"
        table.add_row(key, "-" if value is None else str(value))
    table.add_row("files", str(len(model["manifest"])))
    table.add_row("adapters", ", ".join(adapters) or "none yet")
    out.print(table)
