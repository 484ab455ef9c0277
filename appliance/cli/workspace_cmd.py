"""``appliance init``: the workspace folder and its vault (the first key slot)."""

from __future__ import annotations

import os
import re
import sys

import typer

from appliance import workspace
from appliance.cli.context import PASSPHRASE_ENV, CliState, err, out, state
from appliance.registry.refs import os_user
from appliance.vault import DEFAULT_TARGET_S, Vault, has_vault
from appliance.vault.keyslots import check_label

KDF_TIME_HELP = (
    "Seconds one unlock should take on this machine (Argon2id is calibrated to it; never "
    "below 64 MiB and 3 passes)."
)


def default_label() -> str:
    """The OS user name made into a slot label."""
    label = re.sub(r"[^A-Za-z0-9._-]", "-", os_user()).strip("-._")[:64]
    return label or "owner"


def passphrase_available(st: CliState) -> bool:
    """Whether a passphrase can be had without failing: a file, the environment or a terminal."""
    return st.passphrase_file is not None or PASSPHRASE_ENV in os.environ or sys.stdin.isatty()


def create_vault(st: CliState, ws: workspace.Workspace, label: str, kdf_time: float) -> Vault:
    """Ask for a new passphrase (twice on a terminal), make the vault, and audit it."""
    from appliance.registry import Registry

    passphrase = st.passphrase(prompt="New workspace passphrase", confirm=True)
    with ws.writer("init"):
        vault = Vault.create(ws, passphrase, label, target_s=kdf_time)
        slot = vault.slots()[0]
        with Registry.open(ws, audit_key=vault.audit_key) as reg:
            # The first keyed row: from here on nobody without a passphrase can extend the log.
            reg.audit("vault.create", label, {"kdf": {**slot.kdf.to_json(), "salt": None}})
    return vault


def init(
    ctx: typer.Context,
    label: str | None = typer.Option(
        None, "--label", help="Name of your key slot (default: your user name)."
    ),
    kdf_time: float = typer.Option(DEFAULT_TARGET_S, "--kdf-time", help=KDF_TIME_HELP),
) -> None:
    """Create the workspace and set its passphrase (or check the workspace already there).

    The passphrase comes from --passphrase-file, APPLIANCE_PASSPHRASE or a prompt (asked
    twice). Without any of them (a script with no terminal) the workspace is created without
    its vault; run 'appliance init' again with a passphrase before importing data.
    """
    st = state(ctx)
    ws, created = workspace.init(st.home)
    if created:
        out.print(f"Created workspace {ws.home}")
    else:
        out.print(f"Workspace {ws.home} already exists (format {ws.info().get('format')})")
    if has_vault(ws):
        return
    if not passphrase_available(st):
        err.print(
            f"note: no passphrase was given, so {ws.home} has no vault yet and cannot hold "
            f"datasets; run 'appliance init' again with --passphrase-file FILE or "
            f"{PASSPHRASE_ENV} (or on a terminal)",
            markup=False,
        )
        return
    vault = create_vault(st, ws, check_label(label or default_label()), kdf_time)
    slot = vault.slots()[0]
    out.print(
        f"Set the passphrase of key slot '{slot.label}' (Argon2id, {slot.kdf.memory_kib // 1024} "
        f"MiB, {slot.kdf.iterations} passes). Keep it safe: without a passphrase of this "
        "workspace its datasets cannot be recovered by anybody."
    )


__all__ = ["create_vault", "default_label", "init", "passphrase_available"]
