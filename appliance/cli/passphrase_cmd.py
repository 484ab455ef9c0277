"""``appliance passphrase change|add|remove|list``: the workspace's key slots.

Every slot seals the same master key under one person's passphrase. Changing a passphrase
reseals that person's slot only; no dataset file is rewritten.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import typer
from rich.table import Table

from appliance.cli.context import out, print_json, resolve_passphrase, state
from appliance.cli.workspace_cmd import KDF_TIME_HELP
from appliance.errors import ApplianceError, PassphraseError, UsageError
from appliance.vault import DEFAULT_TARGET_S, keyslots
from appliance.vault.keyslots import check_label, check_new_passphrase

NEW_PASSPHRASE_ENV = "APPLIANCE_NEW_PASSPHRASE"

passphrase_app = typer.Typer(
    name="passphrase",
    help="Workspace passphrases (key slots): change, add, remove, list.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(passphrase_app)


def new_passphrase(new_file: Path | None, prompt: str) -> str:
    """The new passphrase: ``--new-passphrase-file``, ``APPLIANCE_NEW_PASSPHRASE``, or asked
    twice on the terminal."""
    if new_file is not None:
        return check_new_passphrase(resolve_passphrase(new_file))
    if NEW_PASSPHRASE_ENV in os.environ:
        value = os.environ[NEW_PASSPHRASE_ENV]
        if not value:
            raise PassphraseError(f"{NEW_PASSPHRASE_ENV} is set but empty")
        return check_new_passphrase(value)
    if not sys.stdin.isatty():
        raise PassphraseError(
            "a new passphrase is needed and there is no terminal to ask on; use "
            f"--new-passphrase-file FILE or set {NEW_PASSPHRASE_ENV}"
        )
    value = check_new_passphrase(getpass.getpass(f"{prompt}: "))
    if getpass.getpass(f"{prompt} (again): ") != value:
        raise PassphraseError("the two passphrases differ; nothing was changed")
    return value


_NEW_FILE = typer.Option(
    None,
    "--new-passphrase-file",
    help=f"Read the new passphrase from this file (else {NEW_PASSPHRASE_ENV}, else a prompt).",
)
_KDF_TIME = typer.Option(DEFAULT_TARGET_S, "--kdf-time", help=KDF_TIME_HELP)


@passphrase_app.command("change")
def change(
    ctx: typer.Context, new_file: Path | None = _NEW_FILE, kdf_time: float = _KDF_TIME
) -> None:
    """Change your passphrase: only your key slot is rewritten, no dataset file."""
    st = state(ctx)
    ws = st.workspace()
    with ws.writer("passphrase change"):
        vault = st.vault(ws)  # the current passphrase, checked before asking for a new one
        new = new_passphrase(new_file, "New passphrase")
        slot = vault.change_passphrase(new, target_s=kdf_time)
        with st.registry(ws) as reg:
            reg.audit("passphrase.change", slot.label, {"memory_kib": slot.kdf.memory_kib})
    out.print(
        f"Changed the passphrase of key slot '{vault.label}'; the old passphrase no longer opens "
        "this workspace."
    )


@passphrase_app.command("add")
def add(
    ctx: typer.Context,
    label: str = typer.Option(..., "--label", help="Name of the new key slot (the person)."),
    new_file: Path | None = _NEW_FILE,
    kdf_time: float = _KDF_TIME,
) -> None:
    """Give another person access with their own passphrase (a new key slot)."""
    check_label(label)
    st = state(ctx)
    ws = st.workspace()
    with ws.writer("passphrase add"):
        vault = st.vault(ws)
        if (ws.keys_dir / f"{label}{keyslots.SLOT_SUFFIX}").exists():
            raise UsageError(f"key slot {label!r} exists already; choose another --label")
        slot = vault.add_slot(new_passphrase(new_file, f"Passphrase for {label}"), label, kdf_time)
        with st.registry(ws) as reg:
            reg.audit("passphrase.add", slot.label, {"added_by": vault.label})
    out.print(f"Added key slot '{slot.label}'.")


@passphrase_app.command("remove")
def remove(
    ctx: typer.Context,
    label: str = typer.Argument(..., help="The key slot to remove."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove a key slot (never the last one); its passphrase stops opening the workspace."""
    st = state(ctx)
    ws = st.workspace()
    with ws.writer("passphrase remove"):
        vault = st.vault(ws)  # only somebody with a passphrase may remove slots
        labels = [s.label for s in vault.slots()]
        if label not in labels:
            keyslots.remove_slot(ws, label)  # raises the "no such slot" error
        if len(labels) > 1:
            confirm(yes, f"Remove key slot '{label}'? Its passphrase will stop working.")
        vault.remove_slot(label)
        with st.registry(ws) as reg:
            reg.audit("passphrase.remove", label, {"removed_by": vault.label})
    out.print(f"Removed key slot '{label}'.")


@passphrase_app.command("list")
def list_(
    ctx: typer.Context, json_out: bool = typer.Option(False, "--json", help="Print a JSON array.")
) -> None:
    """List the key slots (no passphrase needed)."""
    st = state(ctx)
    slots = keyslots.read_slots(st.workspace())
    if json_out:
        print_json(
            [
                {
                    "label": s.label,
                    "created_at": s.created_at,
                    "kdf": "argon2id",
                    "memory_kib": s.kdf.memory_kib,
                    "iterations": s.kdf.iterations,
                    "lanes": s.kdf.lanes,
                }
                for s in slots
            ]
        )
        return
    table = Table("label", "created", "KDF")
    for s in slots:
        table.add_row(
            s.label,
            s.created_at,
            f"argon2id {s.kdf.memory_kib // 1024} MiB x {s.kdf.iterations}, {s.kdf.lanes} lanes",
        )
    out.print(table)


def confirm(yes: bool, question: str) -> None:
    """Ask ``question`` unless ``--yes``; refuse on a non-terminal without ``--yes``."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("there is no terminal to confirm on; pass --yes to go ahead")
    if not typer.confirm(question, default=False):
        raise ApplianceError("cancelled; nothing was changed")
