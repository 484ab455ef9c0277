"""Adapter version folders: a finished folder put in place as ``adapters/NAME/VERSION``.

The registry is an index of rows; the folders are this module's. :func:`place` moves a staged
folder into the workspace and writes the ``meta.json`` that lets ``appliance verify
--rebuild-index`` recover the version from the folder alone, inside the registry transaction
that adds the version's row.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import RegistryError
from appliance.folders import write_meta
from appliance.fsutil import fsync_dir

if TYPE_CHECKING:
    # Type names only: the training child imports the adapters layer and never loads the
    # registry.
    from appliance.registry import Registry
    from appliance.registry.rows import AdapterVersionRow


def folder_of(name: str, version: int) -> str:
    """Where version ``version`` of adapter ``name`` lives, relative to the workspace home."""
    return f"adapters/{name}/{version}"


def meta_record(row: AdapterVersionRow) -> dict[str, Any]:
    """What a version's ``meta.json`` holds: its row without what changes after it is written
    (tags, the run's state) or means nothing outside this database (the id)."""
    return {k: v for k, v in row.items() if k not in ("id", "tags", "run_state")}


def place(
    reg: Registry,
    name: str,
    staging: Path,
    *,
    run_id: str | None,
    metrics: dict[str, Any] | None = None,
    lib_versions: dict[str, Any] | None = None,
) -> int:
    """Move the finished folder ``staging`` (e.g. under ``ws.tmp_dir``) to
    ``adapters/NAME/VERSION`` and register it as the next version of adapter ``name``.

    The order keeps every crash recoverable:

    1. one registry write transaction (``BEGIN IMMEDIATE``) holds the write lock, so the
       version number cannot be given to another writer;
    2. the folder is renamed into place (an atomic ``rename`` on one file system) and its
       parent folder synced, so the move survives a power cut before the row does;
    3. the row and its audit row are added;
    4. ``meta.json`` (the row, for a rebuild) is written into the folder;
    5. the transaction commits.

    An exception at any step rolls the transaction back and moves the folder back to
    ``staging`` (and removes the name's folder if this version created it): neither file nor
    row is left. A process killed between 2 and 5 leaves the folder in place without a row:
    with its ``meta.json`` (step 4 done) ``appliance verify --rebuild-index`` registers it as
    the commit would have; without it, verify lists it as an unknown folder, and the next
    version of the name refuses to overwrite it (it must be moved away or rebuilt first).

    Returns:
        The new version number.

    Raises:
        RegistryError: a folder is already where the version would go (a crash leftover).
        NotFoundError: ``run_id`` names no run.
    """
    moved: tuple[Path, bool] | None = None
    try:
        with reg.transaction():
            version = reg.adapters.next_version(name)
            if run_id is not None:
                reg.runs.get(run_id)  # before anything moves
            rel = folder_of(name, version)
            target = reg.ws.home / rel
            if target.exists():
                raise RegistryError(
                    f"{target} exists but is not registered; run 'appliance verify "
                    "--rebuild-index' or move it away"
                )
            new_name = not target.parent.exists()
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(staging, target)
            moved = (target, new_name)
            fsync_dir(target.parent)
            reg.adapters.add_version(
                name,
                run_id=run_id,
                path=rel,
                version=version,
                metrics=metrics,
                lib_versions=lib_versions,
            )
            write_meta(
                target, "adapter_version", meta_record(reg.adapters.version(f"{name}@{version}"))
            )
    except BaseException:
        if moved is not None:
            target, new_name = moved
            os.replace(target, staging)
            if new_name:  # the name's folder came with this version: it goes with it
                with suppress(OSError):
                    target.parent.rmdir()
        raise
    return version
