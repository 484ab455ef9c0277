"""``appliance passphrase ...``: key slots (placeholder until the vault lands)."""

from __future__ import annotations

import typer

from appliance.cli import stubs


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(
        stubs.group(
            "passphrase",
            "Workspace passphrases (key slots).",
            {"change": "Change your passphrase; no dataset file is rewritten."},
        )
    )
