"""An unlocked workspace: what the desktop app holds while a person works in it."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.registry import Registry
from appliance.vault import Vault
from appliance.workspace import Workspace


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
