"""``appliance train`` and ``appliance run ...`` (placeholder until training lands)."""

from __future__ import annotations

import typer

from appliance.cli import stubs


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    stubs.command(app, "train", "Train a LoRA/QLoRA adapter in a child process.")
    app.add_typer(
        stubs.group(
            "run",
            "Training runs: list, show, stop, resume.",
            {
                "list": "List runs and their states.",
                "show": "Show a run and replay its metrics.",
                "stop": "Stop a run gracefully (checkpoint first).",
                "resume": "Resume a run from its last verified checkpoint.",
            },
        )
    )
