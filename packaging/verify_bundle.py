#!/usr/bin/env python3
"""Verify an offline install bundle against a pinned Ed25519 public key, with the stdlib only.

This file is the root of the installer's trust chain, so it depends on nothing but Python's
standard library: the site that installs a bundle has no virtual environment yet and its system
``python3`` usually lacks ``cryptography``. A site should keep a reviewed copy of this file next
to its pinned public key (see docs/offline-install.md) and run that copy, so that no code from
a new bundle runs before the bundle is proven authentic; ``install.sh`` prefers such a copy.

What is checked, in this order (any failure: exit 1, one ``error:`` line per problem naming the
file, and nothing else happens):

1. the pinned public key parses (PEM SubjectPublicKeyInfo of an Ed25519 key);
2. ``SHA256SUMS.sig`` is a valid Ed25519 signature by that key over the bytes of ``SHA256SUMS``;
3. every line of ``SHA256SUMS`` is ``<64 hex>  <safe relative path>``;
4. every listed file exists as a regular file (no symlinks) and has that sha256;
5. no other file exists in the bundle (anything unlisted would be unsigned).

Ed25519 verification follows the reference code of RFC 8032, section 6 (cofactorless check);
it is slow in pure Python (a few milliseconds), which does not matter for one signature.

Usage: ``python3 -I verify_bundle.py --pubkey KEY.pem BUNDLE_DIR``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import stat
import sys
from pathlib import Path

MANIFEST = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*$")
_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")
# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
# BIT STRING (33 bytes: 0 unused bits + 32 key bytes) }.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")

# --- Ed25519 (RFC 8032 section 6 reference arithmetic) -----------------------------------------

_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
Point = tuple[int, int, int, int]


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    if x2 % _P == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = t1 * 2 * _D * t2 % _P
    dd = z1 * 2 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(scalar: int, point: Point) -> Point:
    result: Point = (0, 1, 1, 0)
    while scalar > 0:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _equal(a: Point, b: Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _decompress(data: bytes) -> Point | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
assert _GX is not None
_G: Point = (_GX, _GY, 1, _GX * _GY % _P)


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decompress(public_key)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little")
    return _equal(_mul(s, _G), _add(r, _mul(h % _Q, a)))


# --- keys, manifest, files ----------------------------------------------------------------------


class VerifyError(Exception):
    """The bundle must not be installed; ``problems`` lists every reason, each naming a file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_public_key(path: Path) -> bytes:
    """The 32 raw bytes of the Ed25519 public key in a PEM file."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise VerifyError([f"{path}: cannot read the pinned public key ({exc})"]) from None
    match = re.search(r"-----BEGIN PUBLIC KEY-----(.+?)-----END PUBLIC KEY-----", text, re.S)
    der = b""
    if match:
        try:
            der = base64.b64decode("".join(match.group(1).split()), validate=True)
        except ValueError:
            der = b""
    if len(der) != 44 or not der.startswith(_SPKI_PREFIX):
        raise VerifyError([f"{path}: not a PEM Ed25519 public key (BEGIN PUBLIC KEY)"])
    return der[len(_SPKI_PREFIX) :]


def fingerprint(raw_public_key: bytes) -> str:
    """A short name of a public key, to compare by eye: ``sha256:`` + hex of its raw bytes."""
    return "sha256:" + hashlib.sha256(raw_public_key).hexdigest()


def parse_manifest(data: bytes) -> list[tuple[str, str]]:
    """``(sha256, path)`` pairs of a ``sha256sum``-format manifest; strict about every line."""
    entries: list[tuple[str, str]] = []
    problems: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VerifyError([f"{MANIFEST}: not UTF-8 text"]) from None
    seen = set()
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()  # the final newline ends the last line; it does not start a new one
    for number, line in enumerate(lines, start=1):
        match = _LINE.match(line)
        if not match:
            problems.append(f"{MANIFEST} line {number}: not '<sha256>  <path>'")
            continue
        digest, rel = match.groups()
        if not _SAFE_PATH.match(rel) or any(part in (".", "..") for part in rel.split("/")):
            problems.append(f"{MANIFEST} line {number}: unsafe path {rel!r}")
        elif rel in (MANIFEST, SIGNATURE) or rel in seen:
            problems.append(f"{MANIFEST} line {number}: {rel} listed twice or self-listed")
        else:
            seen.add(rel)
            entries.append((digest, rel))
    if problems:
        raise VerifyError(problems)
    if not entries:
        raise VerifyError([f"{MANIFEST}: lists no files"])
    return entries


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _all_files(root: Path) -> list[str]:
    """Every non-directory entry under ``root``, relative, '/'-separated; symlinks included."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            full = Path(folder) / name
            if name in dirs and not full.is_symlink():
                continue
            found.append(full.relative_to(root).as_posix())
    return sorted(found)


def verify_bundle(bundle: Path, public_key: bytes) -> int:
    """Check ``bundle`` (a folder) against ``public_key``; return the number of files verified.

    Raises:
        VerifyError: anything is missing, altered, unlisted or unsigned.
    """
    manifest_path = bundle / MANIFEST
    signature_path = bundle / SIGNATURE
    for required in (manifest_path, signature_path):
        if required.is_symlink() or not required.is_file():
            raise VerifyError([f"{required.name}: missing from the bundle {bundle}"])
    manifest = manifest_path.read_bytes()
    if not ed25519_verify(public_key, manifest, signature_path.read_bytes()):
        raise VerifyError(
            [
                f"{MANIFEST}: the signature in {SIGNATURE} does not verify with the pinned key "
                f"{fingerprint(public_key)}: the manifest was altered or signed by another key"
            ]
        )
    entries = parse_manifest(manifest)
    problems: list[str] = []
    for digest, rel in entries:
        path = bundle / rel
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            problems.append(f"{rel}: missing (listed in the signed manifest)")
            continue
        if not stat.S_ISREG(mode):
            problems.append(f"{rel}: not a regular file")
        elif _sha256(path) != digest:
            problems.append(f"{rel}: sha256 differs from the signed manifest (altered)")
    listed = {rel for _, rel in entries} | {MANIFEST, SIGNATURE}
    problems.extend(
        f"{rel}: not listed in the signed manifest (unexpected file)"
        for rel in _all_files(bundle)
        if rel not in listed
    )
    if problems:
        raise VerifyError(problems)
    return len(entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an offline install bundle.")
    parser.add_argument("--pubkey", required=True, type=Path, help="the pinned public key (PEM)")
    parser.add_argument("bundle", type=Path, help="the unpacked bundle folder")
    args = parser.parse_args(argv)
    try:
        key = load_public_key(args.pubkey)
        if not args.bundle.is_dir():
            raise VerifyError([f"{args.bundle}: not a folder (unpack the tarball first)"])
        count = verify_bundle(args.bundle, key)
    except VerifyError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"error: {problem}\n")
        sys.stderr.write(
            f"error: bundle {args.bundle} failed verification ({len(exc.problems)} problem(s)); "
            "do not install it: get a fresh copy from the build machine\n"
        )
        return 1
    sys.stdout.write(
        f"bundle verified: {count} files match the manifest signed by {fingerprint(key)}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
