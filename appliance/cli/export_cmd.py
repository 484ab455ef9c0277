"""``appliance export``: merged, adapter and GGUF exports (placeholder until export lands)."""

from __future__ import annotations

import typer

from appliance.cli import stubs


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    stubs.command(app, "export", "Export an adapter: merged safetensors, PEFT adapter or GGUF.")
