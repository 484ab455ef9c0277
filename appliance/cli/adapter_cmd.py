"""``appliance adapter ...``: adapter versions (placeholder until the registry lands)."""

from __future__ import annotations

import typer

from appliance.cli import stubs


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(
        stubs.group(
            "adapter",
            "Adapter versions: list, show lineage, tag.",
            {
                "list": "List adapter versions.",
                "show": "Show an adapter version with its lineage.",
                "tag": "Point a tag (e.g. production) at an adapter version.",
            },
        )
    )
