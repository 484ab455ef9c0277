"""The bundle's signing key and its signed manifest.

The private key lives outside every bundle, by default in
``~/.config/finetune-appliance/signing/bundle-signing.key`` (PKCS#8 PEM, mode 0600, in a 0700
folder), and is created on first use. Sites pin the public key (``bundle-signing.pub.pem`` beside
it, also printed by every build) and never take it from a bundle.

The manifest, ``SHA256SUMS``, is in ``sha256sum`` format (``<hex>  <path>``, sorted), so the
coreutils tool can check it too; ``SHA256SUMS.sig`` is the raw 64-byte Ed25519 signature over its
exact bytes, which ``openssl pkeyutl -verify -rawin`` also accepts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.wheels import BuildError

MANIFEST = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/finetune-appliance/signing/bundle-signing.key`` (~/.config default)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "finetune-appliance" / "signing" / "bundle-signing.key"


def public_key_path(key_path: Path) -> Path:
    """Where the public half of ``key_path`` is kept: ``<stem>.pub.pem`` beside it."""
    return key_path.with_name(key_path.stem + ".pub.pem")


def load_or_create_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The signing key at ``path``, created (0600, in a 0700 folder) when absent.

    Returns:
        The key, and whether it was created now.

    Raises:
        BuildError: the file exists but is not an unencrypted Ed25519 PKCS#8 PEM key, or other
            users can read it.
    """
    if path.exists():
        mode = path.stat().st_mode & 0o077
        if mode:
            raise BuildError(
                f"{path}: the signing key is readable by other users (mode {oct(mode)}); "
                f"run chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise BuildError(f"{path}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BuildError(f"{path}: not an Ed25519 key; move it away to create a new one")
        return key, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two builds starting at once must not overwrite each other's fresh key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    public_key_path(path).write_bytes(public_pem(key))
    return key, True


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo (what sites pin)."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: Ed25519PrivateKey) -> str:
    """``sha256:`` + hex of the raw public key; the same as verify_bundle.fingerprint."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def manifest_text(bundle: Path) -> str:
    """``sha256sum``-format lines for every file under ``bundle`` but the manifest and signature.

    Raises:
        BuildError: the bundle holds a symlink or a path the verifier would refuse.
    """
    lines = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if path.is_symlink():
            raise BuildError(f"{rel}: a symlink inside the bundle; bundles hold plain files only")
        if path.is_dir() or rel in (MANIFEST, SIGNATURE):
            continue
        if any(c in rel for c in " \t\n\\") or rel.startswith("/"):
            raise BuildError(f"{rel}: a file name the verifier refuses (spaces or backslashes)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {rel}\n")
    return "".join(lines)


def sign_bundle(bundle: Path, key: Ed25519PrivateKey) -> int:
    """Write ``SHA256SUMS`` and ``SHA256SUMS.sig`` into ``bundle``; return the files listed."""
    text = manifest_text(bundle).encode("utf-8")
    (bundle / MANIFEST).write_bytes(text)
    signature = key.sign(text)
    try:
        key.public_key().verify(signature, text)
    except InvalidSignature:  # pragma: no cover - a broken cryptography build
        raise BuildError(
            "the fresh signature does not verify; the cryptography install is broken"
        ) from None
    (bundle / SIGNATURE).write_bytes(signature)
    return text.count(b"\n")
