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

from appliance.cli.context import err, out, print_json, resolve_passphrase, state
from appliance.cli.workspace_cmd import KDF_TIME_HELP
from appliance.errors import ApplianceError, PassphraseError, UsageError
from appliance.registry import Registry
from appliance.vault import DEFAULT_TARGET_S, Vault, keyslots
from appliance.vault.keyslots import check_label
from appliance.vault.passphrase_rules import check_new_passphrase

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
    ctx: typer.Context,
    new_file: Path | None = _NEW_FILE,
    kdf_time: float = _KDF_TIME,
    label: str | None = typer.Option(
        None,
        "--label",
        help="The key slot to change (default: the one your current passphrase opens).",
    ),
) -> None:
    """Change your passphrase: only the key slot it opens is rewritten, no dataset file."""
    st = state(ctx)
    ws = st.workspace()
    with ws.writer("passphrase change"):
        # The current passphrase, checked before asking for a new one; the slot it opens is
        # the one that changes, and it is named in every message.
        current = st.passphrase()
        vault = Vault.unlock(ws, current, check_label(label) if label else None)
        for warning in vault.warnings:
            err.print(f"warning: {warning}", markup=False)
        also = [s.label for s in keyslots.slots_opened_by(ws, current) if s.label != vault.label]
        new = new_passphrase(new_file, f"New passphrase for key slot '{vault.label}'")
        slot = vault.change_passphrase(new, target_s=kdf_time)
        with Registry.open(ws, audit_key=vault.audit_key) as reg:
            reg.audit("passphrase.change", slot.label, {"memory_kib": slot.kdf.memory_kib})
    out.print(
        f"Changed the passphrase of key slot '{vault.label}'; the old passphrase no longer opens "
        "this slot."
    )
    if also:
        names = ", ".join(f"'{name}'" for name in also)
        err.print(
            f"note: the old passphrase also opens key slot(s) {names}, which did not change; "
            "their owners should change theirs (appliance passphrase change --label NAME)",
            markup=False,
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
    """Remove a key slot (never the last usable one); its passphrase stops opening the workspace."""
    st = state(ctx)
    ws = st.workspace()
    with ws.writer("passphrase remove"):
        vault = st.vault(ws)  # only somebody with a passphrase may remove slots
        slots, damaged = keyslots.scan_slots(ws)
        labels = [s.label for s in slots] + [d.label for d in damaged]
        if label not in labels or (len(slots) == 1 and label == slots[0].label):
            keyslots.remove_slot(ws, label)  # raises "no such slot" or "the last one"
        confirm(yes, f"Remove key slot '{label}'? Its passphrase will stop working.")
        vault.remove_slot(label)
        with st.registry(ws) as reg:
            reg.audit("passphrase.remove", label, {"removed_by": vault.label})
    out.print(f"Removed key slot '{label}'.")


@passphrase_app.command("list")
def list_(
    ctx: typer.Context, json_out: bool = typer.Option(False, "--json", help="Print a JSON array.")
) -> None:
    """List the key slots, damaged ones included (no passphrase needed)."""
    st = state(ctx)
    ws = st.workspace()
    slots, damaged = keyslots.scan_slots(ws)
    if not slots and not damaged:
        keyslots.read_slots(ws)  # raises "has no key slot"
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
            + [{"label": d.label, "damaged": d.reason} for d in damaged]
        )
        return
    table = Table("label", "created", "KDF")
    for s in slots:
        table.add_row(
            s.label,
            s.created_at,
            f"argon2id {s.kdf.memory_kib // 1024} MiB x {s.kdf.iterations}, {s.kdf.lanes} lanes",
        )
    for d in damaged:
        table.add_row(d.label, "-", "DAMAGED (restore it from backup or remove it)")
    out.print(table)
    for d in damaged:
        err.print(f"warning: {d.reason}", markup=False)


def confirm(yes: bool, question: str) -> None:
    """Ask ``question`` unless ``--yes``; refuse on a non-terminal without ``--yes``."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("there is no terminal to confirm on; pass --yes to go ahead")
    if not typer.confirm(question, default=False):
        raise ApplianceError("cancelled; nothing was changed")
