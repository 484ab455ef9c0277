"""Self-describing folders: each model, run and adapter folder carries ``meta.json``, and each
dataset version's encrypted file a ``<object id>.meta.json`` beside it.

The registry is an index over these folders; ``appliance verify --rebuild-index`` rebuilds the
rows from them. ``meta.json`` is one JSON object::

    {"kind": "run", "format": 1, "record": {...}, ...other sections}

``record`` is the registry row with names instead of internal ids, written by the registry on
every change. A folder's owner may keep more sections beside it (a run keeps ``launch``: what its
training child needs, see :mod:`appliance.training.runfolder`); writing one section keeps the
others, so the file stays the one description of the folder. Readers ignore sections they do not
know. Like the registry, metadata holds names, counts and hashes, never a row of anybody's data.

This module imports neither the registry nor torch: the training child reads its run's
description with it.
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
    """Write the ``record`` section of ``folder/meta.json`` (made, with the folder, if needed)."""
    write_section(folder, kind, "record", record)


def write_section(folder: Path, kind: str, name: str, value: dict[str, Any]) -> None:
    """Replace one section of ``folder/meta.json`` atomically, keeping the others.

    Callers that may race on the same folder hold the workspace's writer lock.

    Raises:
        ValueError: an unknown kind, or a reserved section name.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown meta kind {kind!r}")
    if name in ("kind", "format"):
        raise ValueError(f"{name!r} is not a section")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        body = read_body(folder)
    except IntegrityError:
        body = {}  # missing or damaged: the section written now starts a new file
    if body.get("kind") != kind:
        body = {}
    body.update(kind=kind, format=META_FORMAT)
    body[name] = value
    atomic_write_bytes(
        folder / META_FILE,
        (json.dumps(body, indent=2, sort_keys=True, default=str) + "\n").encode(),
    )


def write_meta_file(path: Path, kind: str, record: dict[str, Any]) -> None:
    """Write a metadata file that is not a folder's ``meta.json`` (a dataset version's
    sidecar) atomically; its folder must exist."""
    if kind not in KINDS:
        raise ValueError(f"unknown meta kind {kind!r}")
    body = {"kind": kind, "format": META_FORMAT, "record": record}
    atomic_write_bytes(
        path, (json.dumps(body, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


def sidecar_path(data_file: Path) -> Path:
    """The metadata file beside a dataset version's encrypted file."""
    return data_file.with_name(data_file.name.removesuffix(".enc") + SIDECAR_SUFFIX)


def read_body(folder: Path) -> dict[str, Any]:
    """The whole ``folder/meta.json`` object, every section.

    Raises:
        IntegrityError: the file is missing, not JSON, not a metadata file or of a newer format.
    """
    body = _load(folder / META_FILE)
    _check_format(folder / META_FILE, body)
    return body


def read_meta(folder: Path) -> tuple[str, dict[str, Any]]:
    """``(kind, record)`` of ``folder/meta.json``.

    Raises:
        IntegrityError: the file is missing, not JSON or not a metadata file.
    """
    return read_meta_file(folder / META_FILE)


def read_meta_file(path: Path) -> tuple[str, dict[str, Any]]:
    """``(kind, record)`` of the metadata file ``path`` (a ``meta.json`` or a sidecar).

    Raises:
        IntegrityError: the file is missing, not JSON or not a metadata file.
    """
    body = _load(path)
    if not isinstance(body.get("record"), dict):
        raise IntegrityError(f"{path} is not an appliance metadata file (no kind/record)")
    _check_format(path, body)
    return str(body["kind"]), body["record"]


def _load(path: Path) -> dict[str, Any]:
    # Bounded and regular files only: a rebuild reads every metadata file it finds, and a FIFO
    # or a huge file named meta.json must not hang it or fill the memory.
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
    if not isinstance(body, dict) or body.get("kind") not in KINDS:
        raise IntegrityError(f"{path} is not an appliance metadata file (no kind/record)")
    return body


def _check_format(path: Path, body: dict[str, Any]) -> None:
    if not isinstance(body.get("format"), int) or body["format"] > META_FORMAT:
        raise IntegrityError(f"{path} has an unknown format; upgrade the appliance")


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
