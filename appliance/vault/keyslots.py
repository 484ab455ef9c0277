"""Key slots: one small file per person in ``keys/``, each wrapping the same master key.

A slot (``keys/<label>.slot``, JSON, mode 0600) holds the Argon2id parameters and salt, a
16-byte passphrase check, and the 256-bit master key sealed with AES-256-GCM under a key derived
from the passphrase. The slot's label, workspace id and KDF parameters are the associated
data of that seal, so none of them can be edited without the slot failing to open.

The check (HMAC of a fixed string under a second key derived from the same Argon2id output)
tells a wrong passphrase from a damaged slot: a wrong passphrase fails the check; a right
passphrase whose sealed key does not open means the slot file itself was damaged. The check
helps a guesser no more than the sealed key does: both cost one Argon2id run per guess.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.errors import IntegrityError, NotFoundError, PassphraseError, UsageError
from appliance.fsutil import atomic_write_bytes, fsync_dir
from appliance.vault.kdf import DEFAULT_TARGET_S, KdfParams, calibrate
from appliance.vault.passphrase_rules import MIN_PASSPHRASE_CHARS as MIN_PASSPHRASE_CHARS
from appliance.vault.passphrase_rules import check_new_passphrase as check_new_passphrase
from appliance.workspace import KEY_SLOT_SUFFIX, Workspace

SLOT_FORMAT = "appliance-keyslot"
SLOT_VERSION = 1
SLOT_SUFFIX = KEY_SLOT_SUFFIX
MAX_SLOT_BYTES = 16 * 1024
MASTER_KEY_BYTES = 32
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_label(label: str) -> str:
    """Return ``label`` if it can name a slot file, else raise :class:`UsageError`."""
    if not LABEL_RE.fullmatch(label):
        raise UsageError(
            f"invalid key slot label {label!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return label


def key_id(master_key: bytes | bytearray) -> str:
    """A public fingerprint of the master key, the same in every slot of a workspace."""
    return hmac.new(master_key, b"appliance master key id v1", hashlib.sha256).hexdigest()[:32]


def _split(secret: bytes) -> tuple[bytes, bytes]:
    """(key-encryption key, check key) from the Argon2id output."""
    material = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=None, info=b"appliance keyslot v1"
    ).derive(secret)
    return material[:32], material[32:]


def _check_value(check_key: bytes, vault_id: str) -> bytes:
    return hmac.new(
        check_key, b"appliance passphrase check v1 " + vault_id.encode(), hashlib.sha256
    ).digest()[:16]


@dataclass(frozen=True)
class KeySlot:
    """One parsed slot file."""

    path: Path
    label: str
    vault_id: str
    key_id: str
    created_at: str
    kdf: KdfParams
    check: bytes
    nonce: bytes
    sealed: bytes

    def aad(self) -> bytes:
        """The fields the seal covers, in canonical JSON."""
        fields = [SLOT_FORMAT, SLOT_VERSION, self.label, self.vault_id, self.key_id]
        return json.dumps([*fields, self.kdf.to_json()], sort_keys=True).encode()

    def to_bytes(self) -> bytes:
        record = {
            "format": SLOT_FORMAT,
            "version": SLOT_VERSION,
            "label": self.label,
            "vault_id": self.vault_id,
            "key_id": self.key_id,
            "created_at": self.created_at,
            "kdf": self.kdf.to_json(),
            "check": _b64(self.check),
            "nonce": _b64(self.nonce),
            "sealed_master_key": _b64(self.sealed),
        }
        return (json.dumps(record, indent=2) + "\n").encode()

    def try_open(self, passphrase: str) -> bytes | None:
        """The master key, or None when ``passphrase`` is not this slot's.

        Raises:
            IntegrityError: the passphrase is right but the slot is damaged.
        """
        kek, check_key = _split(self.kdf.derive(passphrase))
        if not hmac.compare_digest(_check_value(check_key, self.vault_id), self.check):
            return None
        try:
            master = AESGCM(kek).decrypt(self.nonce, self.sealed, self.aad())
        except InvalidTag:
            raise IntegrityError(
                f"key slot {self.label!r} ({self.path}) is damaged or was modified; open the "
                "workspace with another person's passphrase, or restore the keys folder "
                "from backup"
            ) from None
        if not hmac.compare_digest(key_id(master), self.key_id):
            raise IntegrityError(f"key slot {self.label!r} ({self.path}) is damaged")
        return master


def seal_slot(
    path: Path,
    label: str,
    vault_id: str,
    master_key: bytes | bytearray,
    passphrase: str,
    kdf: KdfParams,
) -> KeySlot:
    """A new slot (not yet written) sealing ``master_key`` under ``passphrase``."""
    kek, check_key = _split(kdf.derive(passphrase))
    draft = KeySlot(
        path=path,
        label=label,
        vault_id=vault_id,
        key_id=key_id(master_key),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        kdf=kdf,
        check=_check_value(check_key, vault_id),
        nonce=os.urandom(12),
        sealed=b"",
    )
    sealed = AESGCM(kek).encrypt(draft.nonce, master_key, draft.aad())
    return KeySlot(**{**draft.__dict__, "sealed": sealed})


def slot_path(ws: Workspace, label: str) -> Path:
    return ws.keys_dir / f"{check_label(label)}{SLOT_SUFFIX}"


def slot_files(ws: Workspace) -> list[Path]:
    """The slot files of ``ws``, sorted by label."""
    return ws.key_slot_files()


def read_slot(path: Path) -> KeySlot:
    """Parse one slot file, with every KDF parameter bounded before use.

    Raises:
        IntegrityError: the file is unreadable, malformed or out of bounds.
    """
    where = f"key slot {path}"
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SLOT_BYTES + 1)
        if len(raw) > MAX_SLOT_BYTES:
            raise ValueError("file too large")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != SLOT_FORMAT or data.get("version") != SLOT_VERSION:
            raise ValueError("unknown format or version")
        label, vault_id, kid, created = (
            _text(data, k) for k in ("label", "vault_id", "key_id", "created_at")
        )
        kdf = KdfParams.from_json(data.get("kdf"), where)
        slot = KeySlot(
            path=path,
            label=label,
            vault_id=vault_id,
            key_id=kid,
            created_at=created,
            kdf=kdf,
            check=_unb64(data, "check"),
            nonce=_unb64(data, "nonce"),
            sealed=_unb64(data, "sealed_master_key"),
        )
    except OSError as exc:
        raise IntegrityError(f"cannot read {where}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(
            f"{where} is damaged ({exc}); restore the keys folder from backup"
        ) from None
    if len(slot.nonce) != 12 or len(slot.check) != 16 or len(slot.sealed) != 48:
        raise IntegrityError(f"{where} is damaged (field sizes); restore it from backup")
    return slot


@dataclass(frozen=True)
class DamagedSlot:
    """A slot file that cannot be used, and why; the other slots still open the workspace."""

    path: Path
    reason: str

    @property
    def label(self) -> str:
        return self.path.stem

    def warning(self) -> str:
        """What to tell the person whose passphrase opened another slot."""
        return (
            f"key slot {self.label!r} was skipped: {self.reason}. Its owner cannot unlock until "
            f"it is restored from backup, or removed ('appliance passphrase remove {self.label}') "
            "and added again"
        )


@dataclass(frozen=True)
class Unlocked:
    """The outcome of :func:`unlock`: the master key, the slot that opened, what was skipped."""

    master_key: bytes
    slot: KeySlot
    skipped: tuple[DamagedSlot, ...] = ()


def scan_slots(ws: Workspace) -> tuple[list[KeySlot], list[DamagedSlot]]:
    """Every slot file of ``ws``: the usable ones, and the damaged ones with their reason.

    One damaged file (not JSON, absurd KDF parameters) must not lock out every other person,
    so nothing here raises for a single slot.
    """
    slots: list[KeySlot] = []
    damaged: list[DamagedSlot] = []
    for path in slot_files(ws):
        try:
            slots.append(read_slot(path))
        except IntegrityError as exc:
            damaged.append(DamagedSlot(path, _reason(exc)))
    return slots, damaged


def read_slots(ws: Workspace) -> list[KeySlot]:
    """The usable slots of ``ws`` (damaged ones left out); they must share one workspace.

    Raises:
        PassphraseError: the workspace has no key slot.
        IntegrityError: every slot is damaged, or slots disagree about their workspace.
    """
    slots, damaged = scan_slots(ws)
    if not slots and not damaged:
        raise PassphraseError(
            f"workspace {ws.home} has no key slot, so its vault cannot be opened; if it was "
            "just created, run 'appliance init' again to set a passphrase"
        )
    if not slots:
        raise IntegrityError(
            f"every key slot of workspace {ws.home} is damaged (first: {damaged[0].reason}); "
            "restore the keys folder from backup"
        )
    ids = {(s.vault_id, s.key_id) for s in slots}
    if len(ids) > 1:
        raise IntegrityError(
            f"the key slots in {ws.keys_dir} belong to different workspaces; remove the ones "
            "copied from elsewhere"
        )
    return slots


def unlock(ws: Workspace, passphrase: str, label: str | None = None) -> Unlocked:
    """The master key and the slot that ``passphrase`` opens.

    Every usable slot is tried (each costs one Argon2id run), or only ``label`` when given.
    Damaged slots are skipped and reported in :attr:`Unlocked.skipped`.

    Raises:
        PassphraseError: no slot opens with this passphrase.
        IntegrityError: no slot opened and some were damaged (the passphrase may be theirs).
    """
    slots = read_slots(ws)
    damaged = scan_slots(ws)[1]
    if label is not None:
        slots = [s for s in slots if s.label == label]
        damaged = [d for d in damaged if d.label == label]
        if not slots and not damaged:
            raise PassphraseError(f"workspace {ws.home} has no key slot named {label!r}")
    for slot in slots:
        try:
            master = slot.try_open(passphrase)
        except IntegrityError as exc:
            # The passphrase is this slot's but its seal is broken: the others cannot help
            # this person, but they keep working for everybody else.
            damaged.append(DamagedSlot(slot.path, _reason(exc)))
            continue
        if master is not None:
            return Unlocked(master, slot, tuple(damaged))
    if damaged:
        names = ", ".join(repr(d.label) for d in damaged)
        raise IntegrityError(
            f"no usable key slot of workspace {ws.home} opens with this passphrase, and key "
            f"slot(s) {names} are damaged ({damaged[0].reason}); if the passphrase belongs to "
            "one of them, restore the keys folder from backup or ask another slot holder to "
            "re-add you"
        )
    raise PassphraseError(
        f"wrong passphrase for workspace {ws.home}; try again, or ask a person with a key "
        "slot to add one for you (appliance passphrase add)"
    )


def slots_opened_by(ws: Workspace, passphrase: str, *, skip: str | None = None) -> list[KeySlot]:
    """Every usable slot that ``passphrase`` opens (one Argon2id run per slot tried).

    A passphrase shared by two slots would let one person change or remove the other's slot,
    so new passphrases are checked against this before they are sealed.

    Args:
        skip: a slot label not to try (the caller's own, already known).
    """
    opened = []
    for slot in read_slots(ws):
        if slot.label == skip:
            continue
        try:
            if slot.try_open(passphrase) is not None:
                opened.append(slot)
        except IntegrityError:
            opened.append(slot)  # the check matched: the passphrase is this slot's
    return opened


def _refuse_shared(ws: Workspace, passphrase: str, keep: str | None = None) -> None:
    others = [s.label for s in slots_opened_by(ws, passphrase, skip=keep)]
    if others:
        raise UsageError(
            f"this passphrase already opens key slot {others[0]!r}; every person needs a "
            "passphrase of their own, choose another one"
        )


def create_first_slot(
    ws: Workspace, passphrase: str, label: str, target_s: float = DEFAULT_TARGET_S
) -> tuple[bytes, KeySlot]:
    """Make the workspace's master key and its first slot.

    Raises:
        UsageError: the workspace already has key slots, or the passphrase is too weak.
    """
    check_label(label)
    check_new_passphrase(passphrase)
    if slot_files(ws):
        raise UsageError(f"workspace {ws.home} already has a passphrase")
    master = os.urandom(MASTER_KEY_BYTES)
    vault_id = os.urandom(16).hex()
    slot = seal_slot(slot_path(ws, label), label, vault_id, master, passphrase, calibrate(target_s))
    atomic_write_bytes(slot.path, slot.to_bytes())
    return master, slot


def add_slot(
    ws: Workspace,
    master_key: bytes | bytearray,
    passphrase: str,
    label: str,
    target_s: float = DEFAULT_TARGET_S,
) -> KeySlot:
    """Add a slot for another person, sealing the same master key.

    Raises:
        UsageError: a slot with that label exists, the passphrase is too weak, or it already
            opens another slot.
    """
    check_new_passphrase(passphrase)
    existing = read_slots(ws)
    path = slot_path(ws, label)
    if path.exists():
        raise UsageError(f"key slot {label!r} exists already; choose another label")
    if not hmac.compare_digest(key_id(master_key), existing[0].key_id):
        raise IntegrityError("the master key does not belong to this workspace")
    _refuse_shared(ws, passphrase)
    slot = seal_slot(path, label, existing[0].vault_id, master_key, passphrase, calibrate(target_s))
    atomic_write_bytes(path, slot.to_bytes())
    return slot


def change_passphrase(
    ws: Workspace, old: str, new: str, target_s: float = DEFAULT_TARGET_S
) -> KeySlot:
    """Reseal the slot that ``old`` opens under ``new``; nothing else on disk changes.

    Returns:
        The rewritten slot (same label, new salt and parameters).
    """
    check_new_passphrase(new)
    opened = unlock(ws, old)
    return reseal_slot(ws, opened.slot.label, opened.master_key, new, target_s)


def reseal_slot(
    ws: Workspace,
    label: str,
    master_key: bytes | bytearray,
    new: str,
    target_s: float = DEFAULT_TARGET_S,
) -> KeySlot:
    """Rewrite slot ``label`` to seal ``master_key`` under ``new`` (an unlocked caller's own
    slot: the old passphrase was checked when the master key was unlocked).

    Raises:
        UsageError: ``new`` is too weak or already opens another person's slot.
    """
    check_new_passphrase(new)
    slot = next((s for s in read_slots(ws) if s.label == label), None)
    if slot is None:
        raise NotFoundError(f"workspace {ws.home} has no key slot {label!r}")
    if not hmac.compare_digest(key_id(master_key), slot.key_id):
        raise IntegrityError("the master key does not belong to this workspace")
    _refuse_shared(ws, new, keep=label)
    fresh = seal_slot(slot.path, slot.label, slot.vault_id, master_key, new, calibrate(target_s))
    atomic_write_bytes(slot.path, fresh.to_bytes())
    return fresh


def remove_slot(ws: Workspace, label: str) -> None:
    """Delete a slot, usable or damaged. The caller must have unlocked the workspace first.

    Raises:
        NotFoundError: there is no such slot.
        UsageError: it is the last usable one (every dataset would be lost with it).
    """
    path = slot_path(ws, label)
    slots, damaged = scan_slots(ws)
    if path not in {s.path for s in slots} | {d.path for d in damaged}:
        names = ", ".join(s.label for s in slots) + "".join(
            f", {d.label} (damaged)" for d in damaged
        )
        raise NotFoundError(
            f"workspace {ws.home} has no key slot {label!r} (it has: {names.lstrip(', ')})"
        )
    if [s.path for s in slots] == [path]:
        raise UsageError(
            f"key slot {label!r} is the last one of workspace {ws.home}; removing it would make "
            "every dataset unreadable. Add another slot first (appliance passphrase add)"
        )
    path.unlink()
    fsync_dir(path.parent)


def _reason(exc: IntegrityError) -> str:
    # The slot-level advice ("restore ... from backup") is given once by the caller.
    return str(exc).split("; restore", 1)[0].split("; open the workspace", 1)[0]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(data: dict[str, Any], key: str) -> bytes:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"field {key} missing")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"field {key} is not base64") from None


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {key} missing")
    return value
