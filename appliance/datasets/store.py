"""Dataset versions in the workspace: encrypted objects plus registry rows.

Every function here expects the caller to hold the workspace's writer lock for the mutating
ones (import, delete) and an unlocked :class:`~appliance.vault.Vault`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from appliance.datasets import canonical
from appliance.datasets.prepare import Prepared, prepare
from appliance.errors import IntegrityError, UsageError
from appliance.fsutil import atomic_writer, fsync_dir
from appliance.registry import Registry
from appliance.registry.folders import sidecar_path
from appliance.registry.refs import check_name, parse_ref
from appliance.vault import Vault, new_object_id

Row = dict[str, Any]


def object_path(vault: Vault, object_id: str) -> Path:
    """Where a version's object lives: named by its random id, so names never reach the disk
    layout."""
    return vault.ws.datasets_dir / f"{object_id}.enc"


def describe(version: dict[str, Any]) -> str:
    """How messages name a version: "dataset legal-qa version 3"."""
    return f"dataset {version['name']} version {version['version']}"


def resolve(reg: Registry, ref: str, *, include_deleted: bool = False) -> dict[str, Any]:
    """The registry row of ``NAME`` (latest version) or ``NAME@VERSION``.

    Raises:
        UsageError: a malformed reference, or a tag (datasets have none).
        NotFoundError: no such dataset or version.
    """
    parsed = parse_ref(ref, "dataset")
    if parsed.tag is not None:
        raise UsageError(f"datasets have no tags; write {parsed.name}@VERSION (a number)")
    return reg.dataset_version(parsed.name, parsed.version, include_deleted=include_deleted)


def import_file(
    vault: Vault,
    reg: Registry,
    source: Path,
    name: str,
    *,
    fmt: str = "auto",
    skip_invalid: bool = False,
    eval_fraction: float = 0.1,
    seed: int = 42,
) -> tuple[dict[str, Any], Prepared]:
    """Import ``source`` as the next version of dataset ``name``.

    The file is validated in memory, encrypted straight into the workspace, then recorded; if
    recording fails the encrypted file is removed again, so a failed import changes nothing.

    Returns:
        The new registry row and the prepared data (for the summary the caller prints).
    """
    check_name(name, "dataset name")
    prepared = prepare(
        source, fmt, skip_invalid=skip_invalid, eval_fraction=eval_fraction, seed=seed
    )
    object_id = new_object_id()
    target = object_path(vault, object_id)
    info = vault.write(target, object_id, [prepared.plaintext])
    try:
        version = reg.add_dataset_version(
            name,
            object_id=object_id,
            path=str(target.relative_to(vault.ws.home)),
            file_sha256=info.file_sha256,
            **prepared.registry_fields(),
        )
    except BaseException:
        target.unlink(missing_ok=True)
        sidecar_path(target).unlink(missing_ok=True)
        raise
    return reg.dataset_version(name, version), prepared


def read_plaintext(vault: Vault, version: dict[str, Any]) -> bytearray:
    """The stored plaintext of a version, authenticated and checked against the registry.

    Raises:
        IntegrityError: "dataset NAME version N is damaged or was modified (...)", or the
            plaintext does not have the sha256 the registry recorded.
    """
    what = describe(version)
    data = vault.read(vault.path(version["path"]), version["object_id"], what=what)
    if hashlib.sha256(data).hexdigest() != version["sha256"]:
        raise IntegrityError(
            f"{what} does not match its registry record (sha256); restore it from backup"
        )
    return data


def load_rows(vault: Vault, version: dict[str, Any]) -> list[Row]:
    """Every row of a version (with its ``split``), decrypted in memory."""
    return canonical.decode(read_plaintext(vault, version), describe(version))


def export_version(
    vault: Vault, reg: Registry, version: dict[str, Any], out: Path, *, force: bool = False
) -> Path:
    """Write a version's canonical JSONL as plaintext to ``out`` and audit it.

    Raises:
        UsageError: ``out`` lies inside the workspace (plaintext must never be there), is a
            folder, its folder does not exist, or it exists and ``force`` is off.
    """
    out = Path(out).expanduser().absolute()
    home = vault.ws.home.resolve()
    if out.resolve() == home or home in out.resolve().parents:
        raise UsageError(
            f"{out} is inside the workspace, where plaintext must never be written; choose a "
            "place outside it"
        )
    if out.is_dir():
        raise UsageError(f"{out} is a folder; give a file name, e.g. {out / 'data.jsonl'}")
    if not out.parent.is_dir():
        raise UsageError(f"the folder {out.parent} does not exist; create it first")
    if out.exists() and not force:
        raise UsageError(f"{out} exists already; choose another file or pass --force")
    data = read_plaintext(vault, version)
    with reg.transaction():
        # Audited first, inside the transaction: if the write fails the row rolls back, and no
        # export can happen without its row.
        reg.audit(
            "dataset.export",
            f"{version['name']}@{version['version']}",
            {"out": str(out), "sha256": version["sha256"], "rows": version["rows"]},
        )
        with atomic_writer(out, mode=0o600) as handle:
            handle.write(data)
    return out


def delete_version(vault: Vault, reg: Registry, version: dict[str, Any]) -> None:
    """Mark a version deleted (its row stays for lineage) and remove its encrypted file.

    The data key exists only in the file's header, so once the file is gone its data cannot be
    read from the workspace any more (backups of the datasets folder keep it, by design).
    """
    reg.delete_dataset_version(version["name"], version["version"])
    path = vault.path(version["path"])
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


__all__ = [
    "delete_version",
    "describe",
    "export_version",
    "import_file",
    "load_rows",
    "object_path",
    "read_plaintext",
    "resolve",
]
