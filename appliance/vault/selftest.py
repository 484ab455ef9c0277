"""Known-answer checks of the vault's cryptography, for ``appliance selftest``.

Fixed inputs must give fixed outputs: if a library upgrade, a build without AES-NI or a
patched OpenSSL changed any primitive, these fail before any real data is touched.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from appliance.errors import IntegrityError
from appliance.vault.objects import decrypt_with_data_key, read_object, write_object
from appliance.vault.stream import CHUNK_SIZE, HEADER_SIZE, SEALED_CHUNK

Check = tuple[str, bool, str]

# RFC 9106 section 5.3 (Argon2id test vector).
_RFC9106_TAG = "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"

# The vault format with fixed keys, nonces and plaintext (see _fixed_object).
_KAT_FILE_SHA256 = "c6ae7d19bdb2a0449e8010385dcd326532c53b8251a53dcb2dd00d7a965e6512"
_KAT_PLAIN_SHA256 = "ac4bbaf8590c9de84b2be78bd0f467b7594d0a90d9302df0d8e935af15ca70ea"

_MASTER = bytes(range(32))
_DATA_KEY = bytes(range(32, 64))
_OBJECT_ID = "00112233445566778899aabbccddeeff"
_PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")
_WRAP_NONCE = bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babb")


def _plaintext() -> bytes:
    """2.5 chunks of deterministic bytes: a full chunk, another, and a partial last one."""
    return bytes(i % 251 for i in range(2 * CHUNK_SIZE + CHUNK_SIZE // 2))


def _argon2id_rfc9106() -> Check:
    tag = Argon2id(
        salt=b"\x02" * 16,
        length=32,
        iterations=3,
        lanes=4,
        memory_cost=32,
        ad=b"\x04" * 12,
        secret=b"\x03" * 8,
    ).derive(b"\x01" * 32)
    ok = tag.hex() == _RFC9106_TAG
    return ("vault: Argon2id RFC 9106 vector", ok, "matches" if ok else f"got {tag.hex()}")


def _fixed_object(folder: Path) -> Path:
    path = folder / "kat.enc"
    write_object(
        path,
        _MASTER,
        _OBJECT_ID,
        [_plaintext()],
        data_key=_DATA_KEY,
        prefix=_PREFIX,
        wrap_nonce=_WRAP_NONCE,
    )
    return path


def _rejects(path: Path, data: bytes, expect: str) -> tuple[bool, str]:
    path.write_bytes(data)
    try:
        read_object(path, _MASTER, _OBJECT_ID, what="self-test object")
    except IntegrityError as exc:
        ok = "damaged or was modified" in str(exc) and expect in str(exc)
        return ok, str(exc)
    return False, "accepted a modified object"


def known_answer_checks() -> list[Check]:
    """Run every known-answer check; each is ``(name, ok, detail)``. Never raises."""
    checks: list[Check] = []
    try:
        checks.append(_argon2id_rfc9106())
    except Exception as exc:  # selftest reports, it does not crash
        checks.append(("vault: Argon2id RFC 9106 vector", False, f"{type(exc).__name__}: {exc}"))
    with tempfile.TemporaryDirectory(prefix="appliance-selftest-") as tmp:
        folder = Path(tmp)
        try:
            path = _fixed_object(folder)
            raw = path.read_bytes()
        except Exception as exc:
            return [*checks, ("vault: stream encryption", False, f"{type(exc).__name__}: {exc}")]
        got = hashlib.sha256(raw).hexdigest()
        ok = got == _KAT_FILE_SHA256
        checks.append(
            ("vault: stream encryption vector", ok, "matches" if ok else f"file sha256 {got}")
        )
        try:
            plain = read_object(path, _MASTER, _OBJECT_ID)
            via_key = decrypt_with_data_key(path, _DATA_KEY, _OBJECT_ID)
            ok = (
                hashlib.sha256(plain).hexdigest() == _KAT_PLAIN_SHA256
                and plain == _plaintext()
                and via_key == plain
            )
            checks.append(("vault: stream decryption", ok, "round trip" if ok else "mismatch"))
        except IntegrityError as exc:
            checks.append(("vault: stream decryption", False, str(exc)))
        flip = bytearray(raw)
        flip[HEADER_SIZE + SEALED_CHUNK + 100] ^= 0x01
        ok, detail = _rejects(path, bytes(flip), "chunk 2")
        checks.append(("vault: tampered chunk rejected", ok, detail))
        ok, detail = _rejects(path, raw[: HEADER_SIZE + 2 * SEALED_CHUNK], "chunk 2")
        checks.append(("vault: truncation rejected", ok, detail))
        head = bytearray(raw)
        head[20] ^= 0x80
        ok, detail = _rejects(path, bytes(head), "header")
        checks.append(("vault: tampered header rejected", ok, detail))
    return checks
