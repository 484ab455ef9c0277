"""Every file in the workspace, accounted for: registered, one of our temporaries, or unknown.

``appliance verify`` reports unknown files (an encrypted file no dataset version refers to, a
model folder the registry lost) and ``--rebuild-index`` lists those it could not register.
Neither ever deletes one: an unknown file may be the only copy of somebody's work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.folders import META_FILE, SIDECAR_SUFFIX, sidecar_path
from appliance.leftovers import is_temp_name
from appliance.workspace import (
    FORMAT_FILE,
    KEY_SLOT_SUFFIX,
    RETIRED_SUBFOLDERS,
    SUBFOLDERS,
    Workspace,
)

if TYPE_CHECKING:
    from appliance.registry import Registry

REGISTRY_FILES = ("registry.sqlite", "registry.sqlite-wal", "registry.sqlite-shm")
TOKEN_STATS = "token-stats"
"""``datasets/token-stats/``: the encrypted cache of token statistics (one entry per dataset
version and base model; see :mod:`appliance.datasets.token_cache`)."""
DAMAGED_PREFIX = "registry.sqlite.damaged-"
"""Copies of a damaged registry that a rebuild moved aside; kept until the user deletes them."""


@dataclass
class Inventory:
    """What the folders hold beyond what the registry knows."""

    unknown: list[str] = field(default_factory=list)
    """One line per file or folder nothing accounts for (relative path and what it looks like)."""
    kept: list[str] = field(default_factory=list)
    """Files we made on purpose and keep (damaged registries moved aside)."""


@dataclass(frozen=True)
class Known:
    """The names the registry accounts for, per folder."""

    datasets: set[str]
    object_ids: set[str]
    """Object ids of the dataset versions that still have their data (token-stats cache keys)."""
    models: set[str]
    runs: set[str]
    adapters: set[str]
    """``NAME/VERSION`` of every adapter version."""

    @classmethod
    def from_registry(cls, reg: Registry) -> Known:
        datasets: set[str] = {TOKEN_STATS}
        object_ids: set[str] = set()
        for row in reg.datasets.versions(include_deleted=True):
            if row.get("path"):
                data = Path(row["path"])
                datasets |= {data.name, sidecar_path(data).name}
            if row.get("object_id") and row.get("deleted_at") is None:
                object_ids.add(str(row["object_id"]))
        models = {r[0] for r in reg.conn.execute("SELECT name FROM base_models")}
        runs = {r["id"] for r in reg.runs.all()}
        adapters = {
            "/".join(Path(a["path"]).parts[1:3])
            for a in reg.adapters.versions()
            if Path(a["path"]).parts[:1] == ("adapters",)
        }
        return cls(datasets, object_ids, models, runs, adapters)


def take(ws: Workspace, known: Known) -> Inventory:
    """Walk the workspace and list what ``known`` does not account for."""
    inv = Inventory()
    home = ws.home
    for entry in _entries(home):
        name = entry.name
        if name in SUBFOLDERS or name in REGISTRY_FILES or name in (FORMAT_FILE, ".lock"):
            continue
        if name in RETIRED_SUBFOLDERS and entry.is_dir() and not entry.is_symlink():
            # Made empty by earlier versions: silent while empty, its contents are not ours.
            inv.unknown += [
                f"{name}/{inner.name}: in a folder the appliance no longer uses"
                for inner in _entries(entry)
            ]
            continue
        if name.startswith(DAMAGED_PREFIX):
            if name.endswith(("-wal", "-shm")):
                continue  # the journal of the copy named on its own line
            inv.kept.append(f"{name}: a damaged registry kept by a rebuild; delete it when done")
        elif not is_temp_name(name):
            inv.unknown.append(f"{name}: not part of a workspace")
    for entry in _entries(ws.keys_dir):
        if not (entry.suffix == KEY_SLOT_SUFFIX and entry.is_file()) and not is_temp_name(
            entry.name
        ):
            inv.unknown.append(f"keys/{entry.name}: not a key slot file")
    for entry in _entries(ws.datasets_dir):
        if entry.name in known.datasets or is_temp_name(entry.name):
            continue
        inv.unknown.append(f"datasets/{entry.name}: {_dataset_kind(entry)}")
    for entry in _entries(ws.datasets_dir / TOKEN_STATS):
        if is_temp_name(entry.name) or (
            entry.suffix == ".enc" and entry.name.split(".", 1)[0] in known.object_ids
        ):
            continue
        inv.unknown.append(
            f"datasets/{TOKEN_STATS}/{entry.name}: token statistics of no dataset version"
        )
    for folder, names, what in (
        (ws.models_dir, known.models, "model"),
        (ws.runs_dir, known.runs, "run"),
    ):
        for entry in _entries(folder):
            if entry.name not in names and not is_temp_name(entry.name):
                inv.unknown.append(f"{folder.name}/{entry.name}: {_folder_kind(entry, what)}")
    for entry in _entries(ws.adapters_dir):
        if is_temp_name(entry.name):
            continue
        versions = [v for v in _entries(entry) if not is_temp_name(v.name)]
        if not entry.is_dir() or not versions:
            inv.unknown.append(f"adapters/{entry.name}: not an adapter version folder")
        for version in versions:
            if f"{entry.name}/{version.name}" not in known.adapters:
                kind = _folder_kind(version, "adapter version")
                inv.unknown.append(f"adapters/{entry.name}/{version.name}: {kind}")
    for entry in _entries(ws.tmp_dir):
        if not is_temp_name(entry.name):
            inv.unknown.append(f"tmp/{entry.name}: not a temporary file of the appliance")
    return inv


def _dataset_kind(entry: Path) -> str:
    if entry.name.endswith(SIDECAR_SUFFIX):
        return "metadata of a dataset version the registry does not know"
    if entry.suffix == ".enc":
        if sidecar_path(entry).exists():
            return (
                "an encrypted dataset version the registry does not know (its metadata is "
                "beside it: 'appliance verify --rebuild-index' registers it)"
            )
        return "an encrypted file no dataset version refers to"
    return "not a dataset file"


def _folder_kind(entry: Path, what: str) -> str:
    if entry.is_dir() and (entry / META_FILE).is_file():
        return f"a {what} folder not in the registry ('appliance verify --rebuild-index' adds it)"
    return f"not a {what} folder the registry knows"


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []
