"""The vault's object format: spec conformance, bounded memory, and the tamper kit."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.errors import IntegrityError
from appliance.vault import (
    decrypt_with_data_key,
    iter_object,
    new_object_id,
    read_object,
    unwrap_data_key,
    write_object,
)
from appliance.vault.selftest import known_answer_checks
from appliance.vault.stream import CHUNK_SIZE, HEADER_SIZE, SEALED_CHUNK

MASTER = bytes(range(100, 132))
CANARY = b"ZQX-canary-7f3e9a1b-"
WHAT = "dataset legal-qa version 3"
DAMAGED = f"{WHAT} is damaged or was modified ("


def _plaintext(n_bytes: int) -> bytes:
    # Repeated canary text: if any of it leaked into a message, the test would see it.
    reps = n_bytes // len(CANARY) + 1
    return (CANARY * reps)[:n_bytes]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bytes, bytes]:
    """A 5.5-chunk object: (path, object id, plaintext, file bytes)."""
    folder = tmp_path_factory.mktemp("vault-stream")
    path = folder / "sample.enc"
    plain = _plaintext(5 * CHUNK_SIZE + CHUNK_SIZE // 2)
    oid = new_object_id()
    # Uneven pieces exercise the chunker's buffering.
    pieces = [plain[i : i + 10_007] for i in range(0, len(plain), 10_007)]
    write_object(path, MASTER, oid, pieces)
    return path, oid, plain, path.read_bytes()


def _assert_rejected(path: Path, oid: str, data: bytes, where: str | None = None) -> None:
    path.write_bytes(data)
    with pytest.raises(IntegrityError) as info:
        read_object(path, MASTER, oid, what=WHAT)
    message = str(info.value)
    assert message.startswith(DAMAGED), message
    assert "restore it from backup" in message
    assert CANARY[:8].decode() not in message
    if where is not None:
        assert f"({where}" in message, message


def _chunks(raw: bytes) -> list[bytes]:
    payload = raw[HEADER_SIZE:]
    return [payload[i : i + SEALED_CHUNK] for i in range(0, len(payload), SEALED_CHUNK)]


def test_layout_matches_the_documented_spec(tmp_path: Path) -> None:
    """Rebuild an object from the format description with bare primitives: same bytes."""
    data_key, prefix, wrap_nonce = os.urandom(32), os.urandom(7), os.urandom(12)
    oid = new_object_id()
    plain = os.urandom(2 * CHUNK_SIZE)  # an exact multiple: the last chunk is full
    path = tmp_path / "o.enc"
    write_object(
        path, MASTER, oid, [plain], data_key=data_key, prefix=prefix, wrap_nonce=wrap_nonce
    )
    magic = b"APLVLT\r\n"
    fixed = magic + struct.pack(">HBB", 1, 1, 0)
    id_bytes = bytes.fromhex(oid)
    wrapped = AESGCM(MASTER).encrypt(wrap_nonce, data_key, fixed + id_bytes)
    body = fixed + struct.pack(">I", CHUNK_SIZE) + id_bytes + wrap_nonce + wrapped + prefix
    keys = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=None,
        info=b"appliance vault stream v1 " + id_bytes,
    ).derive(data_key)
    mac = hmac.new(keys[:32], body, hashlib.sha256).digest()
    aead = AESGCM(keys[32:])
    expected = body + mac
    expected += aead.encrypt(prefix + (0).to_bytes(4, "big") + b"\x00", plain[:CHUNK_SIZE], mac)
    expected += aead.encrypt(prefix + (1).to_bytes(4, "big") + b"\x01", plain[CHUNK_SIZE:], mac)
    assert path.read_bytes() == expected
    assert len(body) + len(mac) == HEADER_SIZE


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE])
def test_round_trip_at_chunk_edges(tmp_path: Path, size: int) -> None:
    plain = os.urandom(size)
    oid = new_object_id()
    path = tmp_path / "o.enc"
    info = write_object(path, MASTER, oid, [plain[:7], plain[7:]])
    assert info.plaintext_sha256 == hashlib.sha256(plain).hexdigest()
    assert info.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert bytes(read_object(path, MASTER, oid)) == plain
    assert b"".join(iter_object(path, MASTER, oid)) == plain
    key = unwrap_data_key(path, MASTER, oid)
    assert bytes(decrypt_with_data_key(path, key, oid)) == plain
    assert plain[:16] not in path.read_bytes() or size < 16


def test_every_header_byte_and_hundreds_of_payload_bytes(
    sample: tuple[Path, str, bytes, bytes], tmp_path: Path
) -> None:
    _, oid, _, raw = sample
    rng = random.Random(4)
    header_positions = list(range(HEADER_SIZE))
    payload_positions = rng.sample(range(HEADER_SIZE, len(raw)), 300)
    target = tmp_path / "flipped.enc"
    for pos in header_positions + payload_positions:
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << rng.randrange(8)
        chunk = None if pos < HEADER_SIZE else f"chunk {(pos - HEADER_SIZE) // SEALED_CHUNK + 1}"
        _assert_rejected(target, oid, bytes(flipped), chunk or "header")


def test_truncation_at_every_boundary_and_random_offsets(
    sample: tuple[Path, str, bytes, bytes], tmp_path: Path
) -> None:
    _, oid, _, raw = sample
    target = tmp_path / "cut.enc"
    boundaries = [HEADER_SIZE + k * SEALED_CHUNK for k in range(len(_chunks(raw)))]
    rng = random.Random(5)
    offsets = [0, 1, HEADER_SIZE - 1, *boundaries, *rng.sample(range(len(raw)), 60)]
    for cut in offsets:
        _assert_rejected(target, oid, raw[:cut])


def test_dropped_swapped_duplicated_chunks(
    sample: tuple[Path, str, bytes, bytes], tmp_path: Path
) -> None:
    _, oid, _, raw = sample
    header, chunks = raw[:HEADER_SIZE], _chunks(raw)
    target = tmp_path / "edited.enc"
    variants = {
        "drop first": chunks[1:],
        "drop middle": chunks[:2] + chunks[3:],
        "drop last": chunks[:-1],
        "swap 1-2": [chunks[1], chunks[0], *chunks[2:]],
        "swap last two": [*chunks[:-2], chunks[-1], chunks[-2]],
        "duplicate middle": chunks[:3] + chunks[2:],
        "duplicate last": [*chunks, chunks[-1]],
    }
    for name, edited in variants.items():
        assert edited != chunks, name
        _assert_rejected(target, oid, header + b"".join(edited))


def test_appended_bytes(sample: tuple[Path, str, bytes, bytes], tmp_path: Path) -> None:
    _, oid, _, raw = sample
    target = tmp_path / "longer.enc"
    for n in range(1, 65):
        _assert_rejected(target, oid, raw + os.urandom(n))


def test_object_from_elsewhere(sample: tuple[Path, str, bytes, bytes], tmp_path: Path) -> None:
    _, oid, _, raw = sample
    target = tmp_path / "other.enc"
    target.write_bytes(raw)
    # The right file under another object's id (a swapped file) and another workspace's key.
    with pytest.raises(IntegrityError, match="damaged or was modified"):
        read_object(target, MASTER, new_object_id(), what=WHAT)
    with pytest.raises(IntegrityError, match=r"damaged or was modified \(header\)"):
        read_object(target, os.urandom(32), oid, what=WHAT)
    with pytest.raises(IntegrityError, match=r"damaged or was modified \(header\)"):
        decrypt_with_data_key(target, os.urandom(32), oid, what=WHAT)


def test_streaming_stops_at_the_damaged_chunk(
    sample: tuple[Path, str, bytes, bytes], tmp_path: Path
) -> None:
    _, oid, plain, raw = sample
    damaged = bytearray(raw)
    damaged[HEADER_SIZE + 3 * SEALED_CHUNK + 5] ^= 0xFF
    target = tmp_path / "d.enc"
    target.write_bytes(bytes(damaged))
    got: list[bytes] = []

    def consume() -> None:
        # One at a time, so the pieces read before the damage are kept when it raises.
        for piece in iter_object(target, MASTER, oid, what=WHAT):
            got.append(piece)  # noqa: PERF402

    with pytest.raises(IntegrityError, match=r"\(chunk 4\)"):
        consume()
    assert b"".join(got) == plain[: 3 * CHUNK_SIZE]


def test_memory_stays_bounded(tmp_path: Path) -> None:
    total = 24 * 1024 * 1024
    piece = os.urandom(1024 * 1024)

    def pieces() -> Iterator[bytes]:
        for _ in range(total // len(piece)):
            yield piece

    oid = new_object_id()
    path = tmp_path / "big.enc"
    tracemalloc.start()
    try:
        write_object(path, MASTER, oid, pieces())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        seen = 0
        for chunk in iter_object(path, MASTER, oid):
            seen += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == total
    assert write_peak < 4 * 1024 * 1024, write_peak
    assert read_peak < 1024 * 1024, read_peak


def test_known_answer_checks_pass() -> None:
    results = known_answer_checks()
    assert len(results) >= 5
    for name, ok, detail in results:
        assert ok, f"{name}: {detail}"
