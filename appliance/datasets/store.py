"""Dataset versions in the workspace: encrypted objects plus registry rows.

Every function here expects the caller to hold the workspace's writer lock for the mutating
ones (import, delete) and an unlocked :class:`~appliance.vault.Vault`.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from appliance import destinations
from appliance.datasets import canonical
from appliance.datasets.canonical import Row
from appliance.datasets.columns import ColumnMap
from appliance.datasets.control import CancelFlag, Control
from appliance.datasets.prepare import Prepared, prepare
from appliance.errors import DestinationError, IntegrityError, UsageError
from appliance.folders import sidecar_path
from appliance.fsutil import atomic_writer, fsync_dir, sha256_file
from appliance.progress import Progress
from appliance.registry import Registry
from appliance.registry.refs import check_name, parse_ref
from appliance.registry.rows import DatasetVersionRow
from appliance.vault import Vault, new_object_id


def object_path(vault: Vault, object_id: str) -> Path:
    """Where a version's object lives: named by its random id, so names never reach the disk
    layout."""
    return vault.ws.datasets_dir / f"{object_id}.enc"


def version_label(version: DatasetVersionRow) -> str:
    """How messages name a version: "dataset legal-qa version 3"."""
    return f"dataset {version['name']} version {version['version']}"


def resolve(reg: Registry, ref: str, *, include_deleted: bool = False) -> DatasetVersionRow:
    """The registry row of ``NAME`` (latest version) or ``NAME@VERSION``.

    Raises:
        UsageError: a malformed reference, or a tag (datasets have none).
        NotFoundError: no such dataset or version.
    """
    parsed = parse_ref(ref, "dataset")
    if parsed.tag is not None:
        raise UsageError(f"datasets have no tags; write {parsed.name}@VERSION (a number)")
    return reg.datasets.version(parsed.name, parsed.version, include_deleted=include_deleted)


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
    columns: Iterable[str] | Mapping[str, str] | ColumnMap | None = None,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> tuple[DatasetVersionRow, Prepared]:
    """Import ``source`` as the next version of dataset ``name``.

    The file is validated in memory, encrypted straight into the workspace, then recorded; if
    recording fails the encrypted file is removed again, so a failed import changes nothing.

    Args:
        columns: role -> column mapping (``["output=answer"]``, the CLI's ``--map``).
        progress, cancel: see :mod:`appliance.datasets.control`; a cancelled import stores
            nothing.

    Returns:
        The new registry row and the prepared data (for the summary the caller prints).
    """
    check_name(name, "dataset name")
    prepared = prepare(
        source,
        fmt,
        skip_invalid=skip_invalid,
        eval_fraction=eval_fraction,
        seed=seed,
        columns=columns,
        progress=progress,
        cancel=cancel,
    )
    return store_prepared(vault, reg, prepared, name, progress=progress, cancel=cancel), prepared


_PIECE = 1024 * 1024


def _pieces(data: bytes, control: Control) -> Iterator[memoryview]:
    """The plaintext in 1 MiB pieces, checking for cancellation before each."""
    view = memoryview(data)
    total = len(view)
    for start in range(0, total, _PIECE):
        control.step(start, total, "encrypting")
        yield view[start : start + _PIECE]
    control.step(total, total, "encrypting")


def store_prepared(
    vault: Vault,
    reg: Registry,
    prepared: Prepared,
    name: str,
    *,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> DatasetVersionRow:
    """Encrypt prepared data into the workspace and record it as the next version of ``name``.

    Cancellation is checked between pieces of the encryption and once more just before the
    registry row is written; a cancelled or failed store leaves no file and no row.

    Returns:
        The new registry row.
    """
    check_name(name, "dataset name")
    control = Control(progress, cancel)
    control.check()
    object_id = new_object_id()
    target = object_path(vault, object_id)
    info = vault.write(target, object_id, _pieces(prepared.plaintext, control))
    try:
        control.check()
        version = reg.datasets.add_version(
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
    return reg.datasets.version(name, version)


def read_plaintext(vault: Vault, version: DatasetVersionRow) -> bytearray:
    """The stored plaintext of a version, authenticated and checked against the registry.

    Raises:
        IntegrityError: "dataset NAME version N is damaged or was modified (...)", or the
            plaintext does not have the sha256 the registry recorded.
    """
    what = version_label(version)
    data = vault.read(vault.path(version["path"]), version["object_id"], what=what)
    if hashlib.sha256(data).hexdigest() != version["sha256"]:
        raise IntegrityError(
            f"{what} does not match its registry record (sha256); restore it from backup"
        )
    return data


def load_rows(vault: Vault, version: DatasetVersionRow) -> list[Row]:
    """Every row of a version (with its ``split``), decrypted in memory."""
    return canonical.decode(read_plaintext(vault, version), version_label(version))


def export_version(
    vault: Vault, reg: Registry, version: DatasetVersionRow, out: Path, *, force: bool = False
) -> Path:
    """Write a version's canonical JSONL as plaintext to ``out`` and audit it.

    ``force`` replaces an existing file only when it is an unchanged earlier dataset export of
    this workspace (its sha256 is one a ``dataset.export`` audit row recorded); anything else
    there is refused, so an export can never destroy data the appliance did not write.

    Returns:
        The file written (absolute, its folder's symlinks resolved).

    Raises:
        DestinationError: ``out`` touches the workspace (plaintext must never be there), is a
            folder, symlink or device, exists (without ``force``, or is not an earlier export),
            or cannot be written; see :mod:`appliance.destinations`.
    """
    out = destinations.check_export_file(
        out,
        force=force,
        workspace_home=vault.ws.home,
        is_earlier_export=lambda path: _is_earlier_export(reg, path),
        what="an unchanged dataset export of this workspace",
    )
    data = read_plaintext(vault, version)
    try:
        with reg.transaction():
            # Audited first, inside the transaction: if the write fails the row rolls back, and
            # no export can happen without its row.
            reg.audit(
                "dataset.export",
                f"{version['name']}@{version['version']}",
                {"out": str(out), "sha256": version["sha256"], "rows": version["rows"]},
            )
            with atomic_writer(out, mode=0o600) as handle:
                handle.write(data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DestinationError(
                f"out of disk space while writing {out}; nothing was written: free some space "
                "or choose another place"
            ) from None
        raise DestinationError(
            f"cannot write {out}: {exc.strerror or exc}; nothing was written: choose a place "
            "you can write to"
        ) from None
    return out


def _is_earlier_export(reg: Registry, path: Path) -> bool:
    """Whether ``path`` holds exactly the bytes of a dataset export this workspace audited."""
    exported = {
        row["details"].get("sha256")
        for row in reg.audit_rows(action="dataset.export")
        if isinstance(row["details"], dict)
    }
    try:
        return sha256_file(path) in exported
    except OSError:
        return False


def delete_version(vault: Vault, reg: Registry, version: DatasetVersionRow) -> None:
    """Mark a version deleted (its row stays for lineage) and remove its encrypted file.

    The data key exists only in the file's header, so once the file is gone its data cannot be
    read from the workspace any more (backups of the datasets folder keep it, by design).
    """
    reg.datasets.delete_version(version["name"], version["version"])
    from appliance.datasets.token_cache import forget_version

    forget_version(vault.ws, version)
    path = vault.path(version["path"])
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


__all__ = [
    "delete_version",
    "export_version",
    "import_file",
    "load_rows",
    "object_path",
    "read_plaintext",
    "resolve",
    "store_prepared",
    "version_label",
]
