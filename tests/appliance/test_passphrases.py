"""Key slot changes of an unlocked workspace: the vault's rules, the writer lock, audit rows."""

from __future__ import annotations

import pytest

import appliance.workspace as workspace_module
from appliance.errors import NotFoundError, PassphraseError, UsageError, WorkspaceLockedError
from appliance.passphrases import add_key_slot, change_passphrase, remove_key_slot
from appliance.registry import Registry
from appliance.vault import Vault
from appliance.workspace import Workspace

OLD = "first passphrase of alice"
NEW = "second passphrase of alice"


def _audit(vault: Vault) -> list[tuple[str, str]]:
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        assert reg.verify_audit().ok
        return [
            (r["action"], r["object"])
            for r in reg.audit_rows()
            if r["action"].startswith("passphrase.")
        ]


def test_change_add_remove_with_audit(ws: Workspace) -> None:
    vault = Vault.create(ws, OLD, "alice", target_s=0)
    change_passphrase(vault, NEW, target_s=0)
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        Vault.unlock(ws, OLD)
    assert Vault.unlock(ws, NEW).label == "alice"
    slot = add_key_slot(vault, "safe", "kept in the safe downstairs", target_s=0)
    assert slot.label == "safe"
    assert Vault.unlock(ws, "kept in the safe downstairs").label == "safe"
    remove_key_slot(vault, "safe")
    assert [s.label for s in vault.slots()] == ["alice"]
    assert _audit(vault) == [
        ("passphrase.change", "alice"),
        ("passphrase.add", "safe"),
        ("passphrase.remove", "safe"),
    ]


def test_refusals_carry_the_core_messages_and_change_nothing(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = Vault.create(ws, OLD, "alice", target_s=0)
    before = sorted(p.read_bytes() for p in ws.keys_dir.iterdir())
    with pytest.raises(UsageError, match="at least 8 characters"):
        change_passphrase(vault, "short", target_s=0)
    with pytest.raises(UsageError, match="invalid key slot label"):
        add_key_slot(vault, "../bob", "a long enough passphrase", target_s=0)
    with pytest.raises(UsageError, match="exists already"):
        add_key_slot(vault, "alice", "a long enough passphrase", target_s=0)
    with pytest.raises(NotFoundError, match="no key slot 'bob'"):
        remove_key_slot(vault, "bob")
    with pytest.raises(UsageError, match="is the last one"):
        remove_key_slot(vault, "alice")
    assert sorted(p.read_bytes() for p in ws.keys_dir.iterdir()) == before
    monkeypatch.setattr(workspace_module, "LOCK_WAIT_S", 0.1)
    with ws.writer("another process"), pytest.raises(WorkspaceLockedError):
        change_passphrase(vault, NEW, target_s=0)
