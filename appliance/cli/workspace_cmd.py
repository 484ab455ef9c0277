"""``appliance init``: the workspace folder and its vault (the first key slot)."""

from __future__ import annotations

import os
import re

import typer

from appliance import workspace
from appliance.cli.context import PASSPHRASE_ENV, CliState, err, out, state
from appliance.registry.refs import os_user
from appliance.unlocked import create_vault
from appliance.vault import DEFAULT_TARGET_S, has_vault
from appliance.vault.keyslots import check_label
from appliance.vault.passphrase_rules import check_new_passphrase

KDF_TIME_HELP = (
    "Seconds one unlock should take on this machine (Argon2id is calibrated to it; never "
    "below 64 MiB and 3 passes)."
)


def default_label() -> str:
    """The OS user name made into a slot label."""
    label = re.sub(r"[^A-Za-z0-9._-]", "-", os_user()).strip("-._")[:64]
    return label or "owner"


def init(
    ctx: typer.Context,
    label: str | None = typer.Option(
        None, "--label", help="Name of your key slot (default: your user name)."
    ),
    kdf_time: float = typer.Option(DEFAULT_TARGET_S, "--kdf-time", help=KDF_TIME_HELP),
) -> None:
    """Create the workspace and set its passphrase (or check the workspace already there).

    The passphrase comes from --passphrase-file, APPLIANCE_PASSPHRASE or a prompt (asked
    twice). Everything is checked before anything is created: a refused init leaves nothing.
    """
    st = state(ctx)
    home = workspace.resolve_home(st.home)
    existed_before = home.exists()
    if workspace.check_home(home):
        ws = workspace.open_workspace(home)
        if has_vault(ws):
            _existing(st, ws, label)
            return
    slot_label = check_label(label or default_label())
    passphrase = check_new_passphrase(
        st.passphrase(prompt="New workspace passphrase", confirm=True)
    )
    ws, created = workspace.init(home)
    try:
        vault = create_vault(ws, passphrase, slot_label, kdf_time)
    except BaseException:
        if created:
            workspace.discard_new(ws.home, existed_before)
        raise
    out.print(f"Created workspace {ws.home}" if created else f"Added a vault to {ws.home}")
    slot = vault.slots()[0]
    out.print(
        f"Set the passphrase of key slot '{slot.label}' (Argon2id, {slot.kdf.memory_kib // 1024} "
        f"MiB, {slot.kdf.iterations} passes). Keep it safe: without a passphrase of this "
        "workspace its datasets cannot be recovered by anybody."
    )


def _existing(st: CliState, ws: workspace.Workspace, label: str | None) -> None:
    """``init`` on a workspace that has a passphrase: change nothing, and say so.

    A passphrase given by file or environment is checked, so a script that "initialises" with
    the wrong one learns it now instead of at its first real command.
    """
    out.print(
        f"Workspace {ws.home} already exists (format {ws.info().get('format')}); nothing was "
        "changed."
    )
    if label is not None:
        err.print(
            "note: --label is ignored for an existing workspace; add a key slot with "
            "'appliance passphrase add --label NAME'",
            markup=False,
        )
    if st.passphrase_file is None and PASSPHRASE_ENV not in os.environ:
        out.print("Its passphrase was not checked (none was given by file or environment).")
        return
    vault = st.vault(ws)  # a wrong passphrase fails here, exit 1
    out.print(f"The passphrase given opens key slot '{vault.label}'.")


__all__ = ["create_vault", "default_label", "init"]
