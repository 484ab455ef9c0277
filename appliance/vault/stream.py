"""The vault's file format: a MACed header and a STREAM of AES-256-GCM chunks.

Layout of one vault object (all integers big-endian)::

    offset  size  field
    0       8     magic  b"APLVLT\\r\\n"  (the CR LF catches text-mode mangling, as in PNG)
    8       2     format version (1)
    10      1     AEAD id (1 = AES-256-GCM)
    11      1     reserved (0)
    12      4     chunk size (65536)
    16      16    object id (random; also in the registry)
    32      12    nonce under which the master key wrapped the data key
    44      48    the wrapped data key (32 bytes + 16-byte GCM tag)
    92      7     nonce prefix (random)
    99      32    header MAC: HMAC-SHA256 over bytes 0-98
    131     ...   payload: chunks of 65536 plaintext bytes + 16-byte tag; the last is shorter
                  (or full; empty only when the whole plaintext is empty)

Keys: the data key (random, one per object) is wrapped by the master key with AES-256-GCM,
the first 16 header bytes and the object id as associated data. HKDF-SHA256 of the data key
(info names the purpose and the object id) gives the header-MAC key and the payload key.

Chunk ``i`` is sealed with nonce ``prefix || uint32(i) || flag`` where ``flag`` is 1 on the
last chunk only, and the header MAC as associated data: age's STREAM construction. So a chunk
cannot move (its counter changes), the stream cannot be cut at a chunk boundary (the new last
chunk was sealed with flag 0), nothing can be appended after the last chunk (it was sealed
with flag 1, so the chunk before the appended bytes no longer opens as "not last"), and no chunk
of another object or another header fits.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.errors import IntegrityError

MAGIC = b"APLVLT\r\n"
FORMAT_VERSION = 1
AEAD_AES256GCM = 1
CHUNK_SIZE = 64 * 1024
TAG_BYTES = 16
SEALED_CHUNK = CHUNK_SIZE + TAG_BYTES
KEY_BYTES = 32
OBJECT_ID_BYTES = 16
PREFIX_BYTES = 7
MAX_CHUNKS = 1 << 32

_FIXED = struct.Struct(">8sHBBI16s12s48s7s")
HEADER_BODY = _FIXED.size  # 99
MAC_BYTES = 32
HEADER_SIZE = HEADER_BODY + MAC_BYTES  # 131


def damaged(what: str, where: str) -> IntegrityError:
    """The one message for every kind of damage; it names the object and the place, never data."""
    return IntegrityError(f"{what} is damaged or was modified ({where}); restore it from backup")


def _wrap_aad(object_id: bytes) -> bytes:
    return MAGIC + struct.pack(">HBB", FORMAT_VERSION, AEAD_AES256GCM, 0) + object_id


def _subkeys(data_key: bytes, object_id: bytes) -> tuple[bytes, bytes]:
    """(header MAC key, payload key), bound to this object."""
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * KEY_BYTES,
        salt=None,
        info=b"appliance vault stream v1 " + object_id,
    ).derive(data_key)
    return material[:KEY_BYTES], material[KEY_BYTES:]


def chunk_nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    """The 12-byte GCM nonce of chunk ``counter``."""
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def wrap_data_key(
    master_key: bytes | bytearray, object_id: bytes, data_key: bytes, nonce: bytes
) -> bytes:
    """Seal ``data_key`` under the master key for the object ``object_id``."""
    return AESGCM(master_key).encrypt(nonce, data_key, _wrap_aad(object_id))


@dataclass(frozen=True)
class Header:
    """A parsed, not yet authenticated, header."""

    raw: bytes
    object_id: bytes
    wrap_nonce: bytes
    wrapped_key: bytes
    prefix: bytes
    mac: bytes

    @classmethod
    def build(
        cls, data_key: bytes, object_id: bytes, wrap_nonce: bytes, wrapped: bytes, prefix: bytes
    ) -> Header:
        """A complete header for a new object, MAC included."""
        body = _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            AEAD_AES256GCM,
            0,
            CHUNK_SIZE,
            object_id,
            wrap_nonce,
            wrapped,
            prefix,
        )
        mac_key, _ = _subkeys(data_key, object_id)
        mac = hmac.new(mac_key, body, hashlib.sha256).digest()
        return cls(body + mac, object_id, wrap_nonce, wrapped, prefix, mac)

    @classmethod
    def parse(cls, raw: bytes, what: str) -> Header:
        """Split the first :data:`HEADER_SIZE` bytes of an object; checks only the fixed fields.

        Raises:
            IntegrityError: too short, not a vault object, or fields this version cannot read.
        """
        if len(raw) < HEADER_SIZE:
            raise damaged(what, "header: file too short")
        magic, version, aead, reserved, chunk, object_id, nonce, wrapped, prefix = _FIXED.unpack(
            raw[:HEADER_BODY]
        )
        if magic != MAGIC:
            raise damaged(what, "header: not a vault object")
        if version != FORMAT_VERSION:
            raise damaged(
                what,
                f"header: format version {version}, this appliance reads {FORMAT_VERSION}; "
                "if a newer appliance wrote it, upgrade",
            )
        if aead != AEAD_AES256GCM or reserved != 0 or chunk != CHUNK_SIZE:
            raise damaged(what, "header: unknown cipher or chunk size")
        return cls(raw[:HEADER_SIZE], object_id, nonce, wrapped, prefix, raw[HEADER_BODY:])

    def unwrap(self, master_key: bytes | bytearray, what: str) -> bytes:
        """The data key, unsealed with the master key.

        Raises:
            IntegrityError: the wrapped key, the object id or the fixed fields were changed, or
                the object belongs to another workspace.
        """
        try:
            return AESGCM(master_key).decrypt(
                self.wrap_nonce, self.wrapped_key, _wrap_aad(self.object_id)
            )
        except InvalidTag:
            raise damaged(what, "header") from None

    def authenticate(self, data_key: bytes, what: str, expected_id: bytes | None) -> bytes:
        """Check the header MAC with ``data_key``; return the payload key.

        Raises:
            IntegrityError: the MAC fails (header edited, or a wrong data key), or the object id
                is not the expected one (a file swapped for another object's).
        """
        mac_key, payload_key = _subkeys(data_key, self.object_id)
        good = hmac.new(mac_key, self.raw[:HEADER_BODY], hashlib.sha256).digest()
        if not hmac.compare_digest(good, self.mac):
            raise damaged(what, "header")
        if expected_id is not None and not hmac.compare_digest(expected_id, self.object_id):
            raise damaged(what, f"header: it is object {self.object_id.hex()}, not this one")
        return payload_key


class Encryptor:
    """Turns plaintext pushed in any pieces into sealed chunks, holding at most one chunk.

    A chunk is sealed only once the next byte arrives (or at :meth:`finalize`), because whether
    it is the last one is part of its nonce.
    """

    def __init__(self, header: Header, data_key: bytes) -> None:
        _, payload_key = _subkeys(data_key, header.object_id)
        self._aead = AESGCM(payload_key)
        self._header = header
        self._pending = bytearray()
        self._counter = 0
        self._done = False

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Ciphertext of every chunk now known not to be the last."""
        if self._done:
            raise ValueError("update() after finalize()")
        self._pending += data
        out = bytearray()
        while len(self._pending) > CHUNK_SIZE:
            out += self._seal(bytes(self._pending[:CHUNK_SIZE]), last=False)
            del self._pending[:CHUNK_SIZE]
        return bytes(out)

    def finalize(self) -> bytes:
        """The last chunk (possibly full; empty only when nothing was written)."""
        if self._done:
            raise ValueError("finalize() called twice")
        self._done = True
        out = self._seal(bytes(self._pending), last=True)
        self._pending.clear()
        return out

    def _seal(self, chunk: bytes, last: bool) -> bytes:
        if self._counter >= MAX_CHUNKS:
            raise OverflowError("a vault object holds at most 2**32 chunks (256 TiB)")
        nonce = chunk_nonce(self._header.prefix, self._counter, last)
        self._counter += 1
        return self._aead.encrypt(nonce, chunk, self._header.mac)


def iter_chunks(handle: BinaryIO, header: Header, payload_key: bytes, what: str) -> Iterator[bytes]:
    """Open the payload chunk by chunk (bounded memory), after the header was authenticated.

    Each yielded chunk is authentic, but truncation of the whole stream is only known at the
    end: a consumer must not act on the data before the iterator finished without error.

    Raises:
        IntegrityError: naming the first chunk (counting from 1) that does not open.
    """
    aead = AESGCM(payload_key)
    counter = 0
    current = handle.read(SEALED_CHUNK)
    while True:
        # One chunk of lookahead tells whether ``current`` is the last.
        following = handle.read(SEALED_CHUNK) if len(current) == SEALED_CHUNK else b""
        last = not following
        if len(current) < TAG_BYTES or counter >= MAX_CHUNKS:
            raise damaged(what, f"chunk {counter + 1}: truncated")
        if last and len(current) == TAG_BYTES and counter > 0:
            # Only an empty object may end in an empty chunk.
            raise damaged(what, f"chunk {counter + 1}")
        nonce = chunk_nonce(header.prefix, counter, last)
        try:
            plain = aead.decrypt(nonce, current, header.mac)
        except InvalidTag:
            raise damaged(what, f"chunk {counter + 1}") from None
        yield plain
        if last:
            return
        counter += 1
        current = following


def read_all(
    handle: io.BufferedReader, header: Header, payload_key: bytes, what: str, payload_size: int
) -> bytearray:
    """Open the whole payload into one buffer; nothing is returned unless every chunk opened.

    ``payload_size`` (file size minus header) sizes the buffer once and tells which chunk is the
    last. Each chunk is read into one reusable buffer and opened straight into the result, so a
    100 MB dataset costs 100 MB plus one chunk, and no copy per chunk.
    """
    aead = AESGCM(payload_key)
    n_chunks = max(1, -(-payload_size // SEALED_CHUNK))
    out = bytearray(max(0, payload_size - n_chunks * TAG_BYTES))
    target = memoryview(out)
    sealed = memoryview(bytearray(SEALED_CHUNK))
    pos, remaining = 0, payload_size
    try:
        for counter in range(n_chunks):
            size = min(SEALED_CHUNK, remaining)
            remaining -= size
            last = remaining == 0
            if size < TAG_BYTES or (last and size == TAG_BYTES and counter > 0):
                raise damaged(what, f"chunk {counter + 1}: truncated")
            if handle.readinto(sealed[:size]) != size:
                raise damaged(what, "payload size changed while reading")
            nonce = chunk_nonce(header.prefix, counter, last)
            end = pos + size - TAG_BYTES
            try:
                aead.decrypt_into(nonce, sealed[:size], header.mac, target[pos:end])
            except InvalidTag:
                raise damaged(what, f"chunk {counter + 1}") from None
            pos = end
        if handle.read(1):
            raise damaged(what, "payload size changed while reading")
    except BaseException:
        # A failed read releases nothing: the partly opened buffer is wiped, not returned.
        target.release()
        out[:] = bytes(len(out))
        raise
    target.release()
    return out
