"""The unlocked workspace: what the desktop app holds while a person works in it.

Named for its purpose, not its state: "Lock now" and auto-lock lock it again (the vault is dropped,
the folder stays known) until a passphrase unlocks it. Only the desktop app holds one; the CLI
unlocks the vault once per command (:mod:`appliance.cli.context`).
"""

from __future__ import annotations

from appliance.errors import VaultLockedError
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


class UnlockedWorkspace:
    """A workspace the person has unlocked and, until it is locked again, its vault.

    :meth:`lock` ("Lock now", auto-lock) wipes the master key and drops the vault: from then on
    :attr:`vault` and :meth:`registry` raise :class:`~appliance.errors.VaultLockedError` until
    :meth:`unlock` is given a passphrase again. Trainings already running are unaffected: their
    child processes hold their own per-run keys, never the master key.

    SQLite connections belong to the thread that opened them, so each thread (the GUI thread, a
    background task) opens its own registry with :meth:`registry` and closes it when done.
    """

    def __init__(self, vault: Vault) -> None:
        self._ws = vault.ws
        self._vault: Vault | None = vault

    @property
    def ws(self) -> Workspace:
        """The workspace (known while locked too: its folder is no secret)."""
        return self._ws

    @property
    def locked(self) -> bool:
        return self._vault is None

    @property
    def vault(self) -> Vault:
        """The unlocked vault.

        Raises:
            VaultLockedError: the workspace is locked.
        """
        if self._vault is None:
            raise VaultLockedError(
                f"workspace {self._ws.home} is locked; unlock it with your passphrase"
            )
        return self._vault

    def lock(self) -> None:
        """Wipe the master key and forget the vault; idempotent."""
        if self._vault is not None:
            self._vault.lock()
            self._vault = None

    def unlock(self, passphrase: str) -> Vault:
        """Open the vault again with any key slot's passphrase.

        Raises:
            PassphraseError: "wrong passphrase for workspace <home>" (the workspace stays locked).
        """
        vault = Vault.unlock(self._ws, passphrase)
        self.lock()
        self._vault = vault
        return vault

    def registry(self) -> Registry:
        """Open the registry with the audit key (close it: ``with workspace.registry() as reg``).

        Raises:
            VaultLockedError: the workspace is locked.
        """
        return Registry.open(self._ws, audit_key=self.vault.audit_key)
