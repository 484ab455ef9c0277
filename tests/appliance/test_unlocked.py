"""Locking a workspace: the master key is wiped and forgotten, and comes back only by passphrase."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from appliance import datasets
from appliance.errors import PassphraseError, VaultLockedError
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import init as init_workspace

PASS = "workspace passphrase here"


def _reachable(root: Any) -> list[Any]:
    """Every object reachable from ``root`` through references (modules and classes excepted)."""
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type) or type(obj).__name__ == "module":
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return list(seen.values())


def _holds(root: Any, secret: bytes) -> bool:
    return any(isinstance(o, bytes | bytearray) and secret in bytes(o) for o in _reachable(root))


def test_lock_wipes_the_master_key_and_unlock_brings_it_back(tmp_path: Path) -> None:
    ws, _ = init_workspace(tmp_path / "ws")
    workspace = UnlockedWorkspace(Vault.create(ws, PASS, "alice", target_s=0))
    source = tmp_path / "notes.jsonl"
    source.write_text('{"text": "kept across a lock"}\n')
    with workspace.registry() as reg:
        version, _ = datasets.import_file(workspace.vault, reg, source, "notes", eval_fraction=0)
    vault = workspace.vault
    key = bytes(vault.master_key)
    buffer = vault.master_key
    assert _holds(workspace, key)  # the check can see the key while it is there

    workspace.lock()

    assert workspace.locked
    assert buffer == bytearray(len(key))  # wiped in place, not just dropped
    assert not _holds(workspace, key)
    assert not _holds(vault, key)
    with pytest.raises(VaultLockedError, match=r"is locked; unlock it with your passphrase"):
        _ = workspace.vault
    with pytest.raises(VaultLockedError):
        workspace.registry()
    with pytest.raises(VaultLockedError):
        _ = vault.master_key  # a page that kept the old vault cannot use it either
    assert workspace.ws == ws
    workspace.lock()  # idempotent

    with pytest.raises(PassphraseError, match="wrong passphrase for workspace"):
        workspace.unlock("not the passphrase")
    assert workspace.locked
    again = workspace.unlock(PASS)
    assert not workspace.locked
    assert workspace.vault is again
    assert bytes(again.master_key) == key
    with workspace.registry() as reg:
        rows = datasets.load_rows(workspace.vault, datasets.resolve(reg, "notes"))
    assert rows == [{"split": "train", "text": "kept across a lock"}]
    assert "unlocked" in repr(again)
    assert key.hex() not in repr(again)
    assert version["version"] == 1
