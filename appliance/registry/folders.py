"""Self-describing folders: each model, run and adapter folder carries ``meta.json``, and each
dataset version's encrypted file a ``<object id>.meta.json`` beside it.

The registry is an index over these folders; ``appliance verify --rebuild-index`` rebuilds the
rows from them. A metadata file holds ``{"kind": ..., "format": 1, "record": {...}}`` where the
record is the registry row with names instead of internal ids. Like the registry, it holds
names, counts and hashes, never a row of anybody's data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.errors import IntegrityError
from appliance.fsutil import atomic_write_bytes, sha256_file

META_FILE = "meta.json"
META_FORMAT = 1
MAX_META_BYTES = 16 << 20
"""A model's manifest lists every file, so allow a few MiB; never read a huge file whole."""
KINDS = ("base_model", "run", "adapter_version", "dataset_version")
SIDECAR_SUFFIX = ".meta.json"
"""A dataset version's metadata: ``datasets/<object id>.meta.json`` beside ``<object id>.enc``."""


def write_meta(folder: Path, kind: str, record: dict[str, Any]) -> None:
    """Write ``folder/meta.json`` atomically (the folder is created if needed)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_meta_file(folder / META_FILE, kind, record)


def write_meta_file(path: Path, kind: str, record: dict[str, Any]) -> None:
    """Write the metadata file ``path`` atomically (its folder must exist)."""
    if kind not in KINDS:
        raise ValueError(f"unknown meta kind {kind!r}")
    body = {"kind": kind, "format": META_FORMAT, "record": record}
    atomic_write_bytes(
        path, (json.dumps(body, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


def sidecar_path(data_file: Path) -> Path:
    """The metadata file beside a dataset version's encrypted file."""
    return data_file.with_name(data_file.name.removesuffix(".enc") + SIDECAR_SUFFIX)


def read_meta(folder: Path) -> tuple[str, dict[str, Any]]:
    """``(kind, record)`` of ``folder/meta.json``.

    Raises:
        IntegrityError: the file is missing, not JSON or not a metadata file.
    """
    return read_meta_file(folder / META_FILE)


def read_meta_file(path: Path) -> tuple[str, dict[str, Any]]:
    """``(kind, record)`` of the metadata file ``path``.

    Raises:
        IntegrityError: the file is missing, not JSON or not a metadata file.
    """
    try:
        if path.exists() and not path.is_file():
            raise IntegrityError(f"{path} is not a regular file")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_META_BYTES + 1)
        if len(raw) > MAX_META_BYTES:
            raise IntegrityError(f"{path} is larger than any metadata file ({MAX_META_BYTES} B)")
        body = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise IntegrityError(f"{path} is unreadable: {exc}") from None
    if (
        not isinstance(body, dict)
        or body.get("kind") not in KINDS
        or not isinstance(body.get("record"), dict)
    ):
        raise IntegrityError(f"{path} is not an appliance metadata file (no kind/record)")
    if not isinstance(body.get("format"), int) or body["format"] > META_FORMAT:
        raise IntegrityError(f"{path} has an unknown format; upgrade the appliance")
    return str(body["kind"]), body["record"]


def tree_files(folder: Path, *, skip_meta: bool = True) -> list[str]:
    """Relative paths of every regular file under ``folder``, sorted (``meta.json`` skipped)."""
    out: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if skip_meta and rel == META_FILE:
                continue
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def manifest_digest(manifest: dict[str, str]) -> str:
    """One sha256 standing for a whole ``{relative path: sha256}`` manifest."""
    lines = "".join(f"{manifest[k]}  {k}\n" for k in sorted(manifest))
    return hashlib.sha256(lines.encode()).hexdigest()


def artifact_sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of a file, or of a folder as the digest of its manifest (``meta.json`` excluded).

    This is the hash adapter versions and exports record, so ``appliance verify`` can check
    either kind of artifact the same way.
    """
    if path.is_file():
        return sha256_file(path, progress)
    if not path.is_dir():
        raise IntegrityError(f"{path} is missing")
    return manifest_digest({rel: sha256_file(path / rel, progress) for rel in tree_files(path)})
