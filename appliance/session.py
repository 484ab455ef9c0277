"""An unlocked workspace: what the desktop app holds while a person works in it."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.registry import Registry
from appliance.vault import DEFAULT_TARGET_S, Vault
from appliance.workspace import Workspace


def create_vault(
    ws: Workspace, passphrase: str, label: str, target_s: float = DEFAULT_TARGET_S
) -> Vault:
    """Make the vault of ``ws`` with its first key slot, and write the first keyed audit row.

    The CLI's ``init`` and the desktop app's passphrase dialog both come here, so every
    workspace's audit log turns keyed at the moment its vault is born (a vault without any
    keyed row is what a rewritten log looks like).
    """
    with ws.writer("init"):
        vault = Vault.create(ws, passphrase, label, target_s=target_s)
        slot = vault.slots()[0]
        with Registry.open(ws, audit_key=vault.audit_key) as reg:
            # The first keyed row: from here on nobody without a passphrase can extend the log.
            reg.audit("vault.create", label, {"kdf": {**slot.kdf.to_json(), "salt": None}})
    return vault


@dataclass(frozen=True)
class Session:
    """A workspace and its unlocked vault.

    SQLite connections belong to the thread that opened them, so each thread (the GUI thread, a
    background task) opens its own registry with :meth:`registry` and closes it when done.
    """

    vault: Vault

    @property
    def ws(self) -> Workspace:
        return self.vault.ws

    def registry(self) -> Registry:
        """Open the registry with the audit key (close it: ``with session.registry() as reg``)."""
        return Registry.open(self.ws, audit_key=self.vault.audit_key)
