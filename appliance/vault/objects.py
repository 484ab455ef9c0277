"""Vault objects on disk: write, read whole, stream, and hand a data key to a child process."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.errors import IntegrityError, NotFoundError
from appliance.fsutil import atomic_writer
from appliance.vault.stream import (
    CHUNK_SIZE,
    HEADER_SIZE,
    KEY_BYTES,
    OBJECT_ID_BYTES,
    PREFIX_BYTES,
    Encryptor,
    Header,
    damaged,
    iter_chunks,
    read_all,
    wrap_data_key,
)

_SLICE = 16 * CHUNK_SIZE


@dataclass(frozen=True)
class ObjectInfo:
    """What writing an object produced; the registry keeps these."""

    object_id: str
    """Hex of the 16-byte id in the header."""
    file_sha256: str
    """sha256 of the encrypted file, for ``appliance verify`` without the passphrase."""
    plaintext_sha256: str
    plaintext_bytes: int
    file_bytes: int


def new_object_id() -> str:
    """A fresh random object id (hex)."""
    return os.urandom(OBJECT_ID_BYTES).hex()


def _id_bytes(object_id: str) -> bytes:
    try:
        raw = bytes.fromhex(object_id)
    except ValueError:
        raw = b""
    if len(raw) != OBJECT_ID_BYTES:
        raise ValueError(f"object id must be {2 * OBJECT_ID_BYTES} hex digits")
    return raw


def write_object(
    path: Path,
    master_key: bytes | bytearray,
    object_id: str,
    pieces: Iterable[bytes | bytearray | memoryview],
    *,
    data_key: bytes | None = None,
    prefix: bytes | None = None,
    wrap_nonce: bytes | None = None,
) -> ObjectInfo:
    """Encrypt ``pieces`` (any sizes) into a new object at ``path``, atomically.

    Memory stays at about 1 MiB beyond the pieces themselves. Only ciphertext reaches the disk: the
    temporary file of the atomic write already holds sealed chunks.

    Args:
        path: target file; replaced only when everything was written and fsynced.
        master_key: the workspace master key that wraps the new data key.
        object_id: from :func:`new_object_id`; recorded in the header and the registry.
        pieces: the plaintext.
        data_key, prefix, wrap_nonce: fixed values for known-answer tests only; random when None.
    """
    oid = _id_bytes(object_id)
    data_key = os.urandom(KEY_BYTES) if data_key is None else data_key
    prefix = os.urandom(PREFIX_BYTES) if prefix is None else prefix
    wrap_nonce = os.urandom(12) if wrap_nonce is None else wrap_nonce
    header = Header.build(
        data_key, oid, wrap_nonce, wrap_data_key(master_key, oid, data_key, wrap_nonce), prefix
    )
    enc = Encryptor(header, data_key)
    file_hash, plain_hash = hashlib.sha256(), hashlib.sha256()
    plain_bytes = file_bytes = 0

    def emit(handle: BinaryIO, data: bytes) -> None:
        nonlocal file_bytes
        if data:
            handle.write(data)
            file_hash.update(data)
            file_bytes += len(data)

    with atomic_writer(path) as handle:
        emit(handle, header.raw)
        for piece in pieces:
            plain_hash.update(piece)
            plain_bytes += len(piece)
            view = memoryview(piece)
            # Sliced, so one huge piece never doubles in memory as ciphertext.
            for start in range(0, len(view), _SLICE):
                emit(handle, enc.update(view[start : start + _SLICE]))
        emit(handle, enc.finalize())
    return ObjectInfo(
        object_id, file_hash.hexdigest(), plain_hash.hexdigest(), plain_bytes, file_bytes
    )


def _open(path: Path, what: str) -> io.BufferedReader:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise NotFoundError(
            f"{what} is missing from the workspace ({path}); restore it from backup"
        ) from None
    except OSError as exc:
        raise IntegrityError(f"cannot read {what} ({path}): {exc.strerror or exc}") from None


def _what(what: str | None, path: Path) -> str:
    return what if what is not None else f"vault object {path.name}"


def read_object(
    path: Path, master_key: bytes | bytearray, object_id: str | None = None, what: str | None = None
) -> bytearray:
    """The whole plaintext, returned only after every chunk authenticated.

    Args:
        object_id: the id the registry expects; a file swapped in from another object fails.
        what: how errors name the object, e.g. "dataset legal-qa version 3".

    Raises:
        IntegrityError: "<what> is damaged or was modified (chunk N); restore it from backup".
    """
    what = _what(what, path)
    with _open(path, what) as handle:
        header = Header.parse(handle.read(HEADER_SIZE), what)
        key = header.unwrap(master_key, what)
        return _read_rest(handle, header, key, object_id, what)


def iter_object(
    path: Path, master_key: bytes | bytearray, object_id: str | None = None, what: str | None = None
) -> Iterator[bytes]:
    """Stream the plaintext chunk by chunk in bounded memory.

    Every chunk is authentic when yielded, but a cut-off stream is only detected at the end:
    act on the data only after the iteration finished without an error.
    """
    what = _what(what, path)
    with _open(path, what) as handle:
        header = Header.parse(handle.read(HEADER_SIZE), what)
        data_key = header.unwrap(master_key, what)
        expected = None if object_id is None else _id_bytes(object_id)
        payload_key = header.authenticate(data_key, what, expected)
        yield from iter_chunks(handle, header, payload_key, what)


def unwrap_data_key(
    path: Path, master_key: bytes | bytearray, object_id: str | None = None, what: str | None = None
) -> bytes:
    """The data key of one object, checked against its header MAC.

    The parent gives this key (never the master key) to a child process over a pipe, so the
    child can read that one object and nothing else.
    """
    what = _what(what, path)
    with _open(path, what) as handle:
        header = Header.parse(handle.read(HEADER_SIZE), what)
    key = header.unwrap(master_key, what)
    header.authenticate(key, what, None if object_id is None else _id_bytes(object_id))
    return key


def object_id_of(path: Path, what: str | None = None) -> str:
    """The object id written in an object's header (hex), read without any key.

    Not authenticated here: :func:`unwrap_data_key` with this id checks it against the
    header's MAC, so a parent learns the id of an object whose key it hands to a child.
    """
    what = _what(what, path)
    with _open(path, what) as handle:
        header = Header.parse(handle.read(HEADER_SIZE), what)
    return header.object_id.hex()


def decrypt_with_data_key(
    path: Path, data_key: bytes, object_id: str | None = None, what: str | None = None
) -> bytearray:
    """Like :func:`read_object`, with the object's data key instead of the master key."""
    what = _what(what, path)
    if len(data_key) != KEY_BYTES:
        raise IntegrityError(f"the key given for {what} is not a {KEY_BYTES}-byte data key")
    with _open(path, what) as handle:
        header = Header.parse(handle.read(HEADER_SIZE), what)
        return _read_rest(handle, header, data_key, object_id, what)


def _read_rest(
    handle: io.BufferedReader, header: Header, data_key: bytes, object_id: str | None, what: str
) -> bytearray:
    expected = None if object_id is None else _id_bytes(object_id)
    payload_key = header.authenticate(data_key, what, expected)
    size = os.fstat(handle.fileno()).st_size - HEADER_SIZE
    if size <= 0:
        raise damaged(what, "chunk 1: truncated")
    return read_all(handle, header, payload_key, what, size)
