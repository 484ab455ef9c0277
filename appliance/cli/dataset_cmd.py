"""``appliance dataset ...``: encrypted datasets (placeholder until the vault lands)."""

from __future__ import annotations

import typer

from appliance.cli import stubs


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(
        stubs.group(
            "dataset",
            "Encrypted datasets: import, list, show, export, delete.",
            {
                "import": "Import a JSONL/JSON/CSV/text file as a new dataset version.",
                "list": "List datasets and their versions.",
                "show": "Show a dataset version: statistics and a preview.",
                "export": "Write a dataset version as plaintext to a file you choose.",
                "delete": "Delete a dataset version.",
            },
        )
    )
