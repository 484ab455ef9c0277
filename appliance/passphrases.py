"""Changing the key slots of an unlocked workspace: each change under the writer lock, audited.

What ``appliance passphrase change|add|remove`` does once it has its answers, for the desktop
app's Settings page (which asks its questions in dialogs instead of on a terminal). The rules
and their messages are the vault's (:mod:`appliance.vault.keyslots`): the passphrase minimum,
label syntax, an existing label, never the last slot.
"""

from __future__ import annotations

from appliance.errors import UsageError
from appliance.registry import Registry
from appliance.vault import DEFAULT_TARGET_S, KeySlot, Vault, keyslots
from appliance.vault.keyslots import check_label, check_new_passphrase


def change_passphrase(vault: Vault, new: str, target_s: float = DEFAULT_TARGET_S) -> KeySlot:
    """Reseal the key slot ``vault`` was opened with under ``new``; no dataset file changes.

    Raises:
        UsageError: ``new`` breaks the passphrase rule (nothing is written).
        WorkspaceLockedError: another process is writing to the workspace.
    """
    check_new_passphrase(new)
    ws = vault.ws
    with ws.writer("passphrase change"):
        slot = vault.change_passphrase(new, target_s=target_s)
        with Registry.open(ws, audit_key=vault.audit_key) as reg:
            reg.audit("passphrase.change", slot.label, {"memory_kib": slot.kdf.memory_kib})
    return slot


def add_key_slot(
    vault: Vault, label: str, passphrase: str, target_s: float = DEFAULT_TARGET_S
) -> KeySlot:
    """Give another person (or a sealed envelope in a safe) their own passphrase.

    Raises:
        UsageError: a malformed or existing label, or a passphrase that breaks the rule.
    """
    check_label(label)
    check_new_passphrase(passphrase)
    ws = vault.ws
    with ws.writer("passphrase add"):
        if (ws.keys_dir / f"{label}{keyslots.SLOT_SUFFIX}").exists():
            raise UsageError(f"key slot {label!r} exists already; choose another label")
        slot = vault.add_slot(passphrase, label, target_s)
        with Registry.open(ws, audit_key=vault.audit_key) as reg:
            reg.audit("passphrase.add", slot.label, {"added_by": vault.label})
    return slot


def remove_key_slot(vault: Vault, label: str) -> None:
    """Remove a key slot; its passphrase stops opening the workspace.

    Raises:
        NotFoundError: no such slot.
        UsageError: it is the last one (every dataset would become unreadable).
    """
    ws = vault.ws
    with ws.writer("passphrase remove"):
        vault.remove_slot(label)
        with Registry.open(ws, audit_key=vault.audit_key) as reg:
            reg.audit("passphrase.remove", label, {"removed_by": vault.label})
