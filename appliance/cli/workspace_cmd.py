"""``appliance init``."""

from __future__ import annotations

import typer

from appliance import workspace
from appliance.cli.context import out, state


def init(ctx: typer.Context) -> None:
    """Create the workspace (or check the one already there)."""
    st = state(ctx)
    ws, created = workspace.init(st.home)
    if created:
        out.print(f"Created workspace {ws.home}")
    else:
        out.print(f"Workspace {ws.home} already exists (format {ws.info().get('format')})")
