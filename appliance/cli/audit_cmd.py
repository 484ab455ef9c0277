"""``appliance verify`` and ``appliance audit`` (placeholder until the registry lands)."""

from __future__ import annotations

import typer

from appliance.cli import stubs


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    stubs.command(app, "verify", "Check the registry, every artifact's hash and the audit chain.")
    stubs.command(app, "audit", "List the audit log and verify its hash chain.")
