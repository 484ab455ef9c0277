"""``appliance model ...``: base models (placeholder until the registry lands)."""

from __future__ import annotations

import typer

from appliance.cli import stubs


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(
        stubs.group(
            "model",
            "Base models: import a safetensors folder or a GGUF file, list, show.",
            {
                "import": "Import a base model (HF safetensors folder or GGUF file).",
                "list": "List base models.",
                "show": "Show a base model.",
            },
        )
    )
