"""``appliance selftest`` (placeholder until the offline bundle lands)."""

from __future__ import annotations

import typer

from appliance.cli import stubs


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    stubs.command(app, "selftest", "Run the known-answer and environment self-test.")
