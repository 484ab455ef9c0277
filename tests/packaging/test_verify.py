"""The stdlib-only verifier: Ed25519 against `cryptography`, key and manifest parsing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import verify_bundle as vb
from bundler import signing
from bundler.wheels import expand_platforms
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_rfc8032_test_vector_1() -> None:
    # RFC 8032 section 7.1, TEST 1 (empty message).
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert vb.ed25519_verify(public, b"", signature)
    assert not vb.ed25519_verify(public, b"x", signature)


def test_agrees_with_cryptography_and_rejects_every_alteration() -> None:
    for size in (0, 1, 64, 1000):
        key = Ed25519PrivateKey.generate()
        message = os.urandom(size)
        signature = key.sign(message)
        public = _raw(key)
        assert vb.ed25519_verify(public, message, signature)
        flipped = bytearray(signature)
        flipped[size % 64] ^= 0x01
        assert not vb.ed25519_verify(public, message, bytes(flipped))
        assert not vb.ed25519_verify(public, message + b"\0", signature)
        assert not vb.ed25519_verify(_raw(Ed25519PrivateKey.generate()), message, signature)
    # s >= group order must be refused (signature malleability).
    big_s = signature[:32] + (2**253).to_bytes(32, "little")
    assert not vb.ed25519_verify(public, message, big_s)
    assert not vb.ed25519_verify(public[:31], message, signature)


def test_public_key_pem_round_trip_and_bad_keys(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "k.pem"
    pem.write_bytes(signing.public_pem(key))
    assert vb.load_public_key(pem) == _raw(key)
    assert vb.fingerprint(_raw(key)) == signing.fingerprint(key)
    rsa_like = tmp_path / "bad.pem"
    rsa_like.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(vb.VerifyError, match=r"bad\.pem: not a PEM Ed25519 public key"):
        vb.load_public_key(rsa_like)
    with pytest.raises(vb.VerifyError, match=r"missing\.pem: cannot read"):
        vb.load_public_key(tmp_path / "missing.pem")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("0" * 64 + "  ../etc/passwd", "unsafe path"),
        ("0" * 64 + "  /etc/passwd", "unsafe path"),
        ("0" * 64 + "  a/./b", "unsafe path"),
        ("0" * 64 + " one-space", "not '<sha256>  <path>'"),
        ("0" * 63 + "  short-hash", "not '<sha256>  <path>'"),
        ("0" * 64 + "  SHA256SUMS", "self-listed"),
        ("", "not '<sha256>  <path>'"),
    ],
)
def test_manifest_lines_are_strict(line: str, problem: str) -> None:
    good = "1" * 64 + "  install.sh\n"
    with pytest.raises(vb.VerifyError) as info:
        vb.parse_manifest((good + line + "\n").encode())
    assert any(problem in p and "line 2" in p for p in info.value.problems)


def test_signed_folder_verifies_and_openssl_agrees(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    (bundle / "wheelhouse").mkdir(parents=True)
    (bundle / "install.sh").write_text("#!/bin/sh\n")
    (bundle / "wheelhouse" / "x-1-py3-none-any.whl").write_bytes(os.urandom(100))
    key = Ed25519PrivateKey.generate()
    assert signing.sign_bundle(bundle, key) == 2
    assert vb.verify_bundle(bundle, _raw(key)) == 2
    with pytest.raises(vb.VerifyError, match=r"SHA256SUMS: the signature .* does not verify"):
        vb.verify_bundle(bundle, _raw(Ed25519PrivateKey.generate()))
    # The same check with a tool that is not ours (docs/offline-install.md shows it).
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pem = tmp_path / "pub.pem"
    pem.write_bytes(signing.public_pem(key))
    proc = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin",
         "-in", str(bundle / "SHA256SUMS"), "-sigfile", str(bundle / "SHA256SUMS.sig")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Signature Verified Successfully" in proc.stdout
    sums = subprocess.run(
        ["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, check=False
    )
    assert sums.returncode == 0


def test_symlink_and_unlisted_files_are_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "install.sh").write_text("#!/bin/sh\n")
    key = Ed25519PrivateKey.generate()
    signing.sign_bundle(bundle, key)
    (bundle / "extra.pth").write_text("import os\n")
    (bundle / "link").symlink_to("/etc/passwd")
    with pytest.raises(vb.VerifyError) as info:
        vb.verify_bundle(bundle, _raw(key))
    text = "\n".join(info.value.problems)
    assert "extra.pth: not listed in the signed manifest" in text
    assert "link: not listed in the signed manifest" in text


def test_download_platforms_include_every_older_glibc_tag() -> None:
    # pip download matches --platform literally; torch's CPU wheel is manylinux_2_28 and must
    # be accepted for a manylinux_2_34 target.
    tags = expand_platforms(["manylinux_2_34_x86_64"])
    assert tags[0] == "manylinux_2_34_x86_64"
    for older in ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"):
        assert older in tags
    assert "manylinux_2_35_x86_64" not in tags
    assert expand_platforms(["macosx_11_0_arm64"]) == ["macosx_11_0_arm64"]
