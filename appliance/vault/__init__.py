"""The vault: everything the appliance keeps about people's data is encrypted with it.

Key hierarchy::

    passphrase --Argon2id--> key-encryption key  (one per key slot, keys/<label>.slot)
        --AES-256-GCM--> master key (random, 256 bits, the same in every slot)
            --AES-256-GCM--> data key (random, one per stored object, in the object's header)
                --HKDF--> payload key + header-MAC key --STREAM of AES-256-GCM chunks--> file
            --HKDF--> audit key (keys the registry's audit chain)

Changing a passphrase reseals one slot; no object is rewritten. See ``docs/security.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.errors import VaultLockedError
from appliance.vault import keyslots
from appliance.vault.kdf import DEFAULT_TARGET_S, KdfParams, calibrate
from appliance.vault.keyslots import KeySlot
from appliance.vault.objects import (
    ObjectInfo,
    decrypt_with_data_key,
    iter_object,
    new_object_id,
    read_object,
    unwrap_data_key,
    write_object,
)
from appliance.workspace import Workspace

__all__ = [
    "DEFAULT_TARGET_S",
    "KdfParams",
    "KeySlot",
    "ObjectInfo",
    "Vault",
    "calibrate",
    "decrypt_with_data_key",
    "derive_audit_key",
    "has_vault",
    "new_object_id",
    "unlock_audit_key",
    "unwrap_data_key",
]

AUDIT_INFO = b"appliance audit chain v1"


def derive_audit_key(master_key: bytes | bytearray) -> bytes:
    """The key of the registry's audit chain: HKDF-SHA256 of the master key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=AUDIT_INFO).derive(master_key)


def has_vault(ws: Workspace) -> bool:
    """Whether ``ws`` has at least one key slot (then its data and audit chain are keyed)."""
    return ws.has_key_slots()


def unlock_audit_key(ws: Workspace, passphrase: str) -> bytes:
    """Open the vault of ``ws`` with ``passphrase`` and derive its audit key."""
    return Vault.unlock(ws, passphrase).audit_key


class Vault:
    """An unlocked vault: the workspace and its master key, held in memory only.

    The key lives in one ``bytearray`` that :meth:`lock` overwrites with zeros and drops, so a
    locked vault (the desktop app's "Lock now", auto-lock) no longer holds it; every use after
    that raises :class:`~appliance.errors.VaultLockedError`. Python cannot promise more: copies
    made on the way in (the unsealed bytes of the key slot) and keys derived by the
    cryptography library are freed, not wiped.
    """

    def __init__(
        self,
        ws: Workspace,
        master_key: bytes | bytearray,
        label: str,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.ws = ws
        self.label = label
        """The key slot that was opened."""
        self.warnings = warnings
        """Damaged key slots skipped while unlocking: shown to the person, who may fix them."""
        self._key: bytearray | None = bytearray(master_key)

    def __repr__(self) -> str:
        state = "locked" if self._key is None else "unlocked"
        return f"Vault({self.ws.home}, slot {self.label!r}, {state})"

    @property
    def locked(self) -> bool:
        return self._key is None

    @property
    def master_key(self) -> bytearray:
        """The master key (the one buffer :meth:`lock` wipes; do not keep copies of it).

        Raises:
            VaultLockedError: the vault was locked.
        """
        if self._key is None:
            raise VaultLockedError(
                f"workspace {self.ws.home} is locked; unlock it with your passphrase"
            )
        return self._key

    def lock(self) -> None:
        """Overwrite the master key with zeros and forget it; idempotent."""
        if self._key is not None:
            self._key[:] = bytes(len(self._key))
            self._key = None

    @classmethod
    def create(
        cls, ws: Workspace, passphrase: str, label: str, target_s: float = DEFAULT_TARGET_S
    ) -> Vault:
        """Make the master key and the first key slot of ``ws``."""
        master, slot = keyslots.create_first_slot(ws, passphrase, label, target_s)
        return cls(ws, master, slot.label)

    @classmethod
    def unlock(cls, ws: Workspace, passphrase: str, label: str | None = None) -> Vault:
        """Open the vault with any slot's passphrase (or only slot ``label``).

        Damaged slots are skipped (see :attr:`warnings`), so one bad file locks nobody out.

        Raises:
            PassphraseError: "wrong passphrase for workspace <home>", or no slot at all.
            IntegrityError: no slot opened and some are damaged (it may be this person's).
        """
        opened = keyslots.unlock(ws, passphrase, label)
        warnings = tuple(d.warning() for d in opened.skipped)
        return cls(ws, opened.master_key, opened.slot.label, warnings)

    @property
    def audit_key(self) -> bytes:
        return derive_audit_key(self.master_key)

    def add_slot(self, passphrase: str, label: str, target_s: float = DEFAULT_TARGET_S) -> KeySlot:
        """Give another person access with their own passphrase."""
        return keyslots.add_slot(self.ws, self.master_key, passphrase, label, target_s)

    def change_passphrase(self, new: str, target_s: float = DEFAULT_TARGET_S) -> KeySlot:
        """Reseal the slot this vault was opened with under ``new``; no object changes."""
        return keyslots.reseal_slot(self.ws, self.label, self.master_key, new, target_s)

    def remove_slot(self, label: str) -> None:
        """Remove a slot (never the last one)."""
        keyslots.remove_slot(self.ws, label)

    def slots(self) -> list[KeySlot]:
        return keyslots.read_slots(self.ws)

    def path(self, relative: str | Path) -> Path:
        """An object path inside the workspace from the registry's relative form."""
        return self.ws.home / relative

    def write(
        self, path: Path, object_id: str, pieces: Iterable[bytes | bytearray | memoryview]
    ) -> ObjectInfo:
        """Encrypt ``pieces`` into a new object file, atomically."""
        return write_object(path, self.master_key, object_id, pieces)

    def read(self, path: Path, object_id: str | None = None, what: str | None = None) -> bytearray:
        """The whole plaintext after every chunk authenticated."""
        return read_object(path, self.master_key, object_id, what)

    def stream(
        self, path: Path, object_id: str | None = None, what: str | None = None
    ) -> Iterator[bytes]:
        """Plaintext chunk by chunk; see :func:`appliance.vault.objects.iter_object`."""
        return iter_object(path, self.master_key, object_id, what)

    def data_key(self, path: Path, object_id: str | None = None, what: str | None = None) -> bytes:
        """The data key of one object, for a child process that must read only that object."""
        return unwrap_data_key(path, self.master_key, object_id, what)
