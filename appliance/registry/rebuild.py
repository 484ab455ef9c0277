"""``appliance verify --rebuild-index``: registry rows rebuilt from the folders' own metadata.

All or nothing. A healthy registry (one that passes SQLite's ``integrity_check``) is never
moved or replaced: rows that folders describe and the registry lacks are added in one
transaction, with the schema's triggers and missing dataset metadata files restored. A damaged
or missing registry is rebuilt into a new file *beside* it; only when that file is complete is
the damaged one kept aside (``registry.sqlite.damaged-TIME``) and the new one renamed into its
place. A failure at any point before leaves the workspace exactly as it was.

Where rows come from: ``models/*/meta.json``, ``datasets/*.meta.json``, ``runs/*/meta.json``,
``adapters/*/*/meta.json``; then, from a damaged registry as far as it can still be read,
dataset versions written before datasets carried metadata, tags and exports. Every file that
nothing accounts for is listed, and left where it is.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError, IntegrityError, PassphraseError, RegistryError
from appliance.folders import META_FILE, SIDECAR_SUFFIX, read_meta_file
from appliance.fsutil import fsync_dir, sha256_file, temp_name
from appliance.registry import inventory
from appliance.registry.failures import explain, is_damage
from appliance.registry.refs import now, os_user
from appliance.registry.schema import SCHEMA_VERSION, restore_triggers
from appliance.workspace import Workspace

if TYPE_CHECKING:
    from appliance.registry import Registry

DAMAGED_SUFFIX = ".damaged-"


def rebuild_index(ws: Workspace, audit_key: bytes | None = None) -> list[str]:
    """Rebuild the registry of ``ws`` from its folders; call with the writer lock held.

    Args:
        ws: the workspace.
        audit_key: the vault's audit key; required when the workspace has a vault (the
            rebuilt registry's audit log is keyed from its first row).

    Returns:
        One line per action taken or file not accounted for, for the report.

    Raises:
        PassphraseError: the workspace has a vault and no key was given (nothing was touched).
        RegistryError: the registry cannot be judged (read-only workspace, newer version,
            busy): it is left alone.
    """
    if audit_key is None and ws.has_key_slots():
        raise PassphraseError(
            "rebuilding the registry needs the workspace passphrase (its audit log is keyed); "
            "give it with --passphrase-file or APPLIANCE_PASSPHRASE; nothing was changed"
        )
    state, reason = registry_health(ws.registry_path)
    if state == "healthy":
        return _complete_in_place(ws, audit_key)
    return _rebuild_beside(ws, audit_key, damaged=reason if state == "damaged" else None)


def registry_health(path: Path) -> tuple[str, str | None]:
    """``("healthy" | "damaged" | "missing", why damaged)``, judged read-only.

    Raises:
        RegistryError: a failure that says nothing about the file (read-only folder that
            cannot be opened, busy, newer schema): then nobody may touch it.
    """
    if not path.exists():
        return "missing", None
    try:
        with _read_only(path) as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RegistryError(
                    f"the registry {path} has schema version {version}, newer than this "
                    f"appliance understands ({SCHEMA_VERSION}); upgrade the appliance, it was "
                    "not modified"
                )
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            return "damaged", str(exc)
        raise explain(exc, path, "checking it") from None
    if problems:
        return "damaged", f"integrity_check: {problems[0]}"
    return "healthy", None


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        yield conn
    finally:
        conn.close()


# -- a healthy registry: add what is missing, in one transaction ---------------------------------


def _complete_in_place(ws: Workspace, audit_key: bytes | None) -> list[str]:
    from appliance.registry import Registry

    with Registry.open(ws, audit_key) as reg, reg.transaction():
        changes = restore_triggers(reg.conn)
        changes += [
            f"wrote the missing metadata file of dataset {ref}"
            for ref in reg.datasets.backfill_meta()
        ]
        changes += _rows_from_folders(ws, reg)
        if changes:
            reg.audit("registry.rebuild", str(reg.path), {"actions": changes, "in_place": True})
        unknown = inventory.take(ws, inventory.Known.from_registry(reg)).unknown
    if not changes:
        changes = ["the registry is healthy and already lists every folder; nothing was changed"]
    return changes + [f"could not account for {line}; it was left in place" for line in unknown]


# -- a damaged or missing registry: a new file beside it, swapped in at the end -------------------


def _rebuild_beside(ws: Workspace, audit_key: bytes | None, damaged: str | None) -> list[str]:
    from appliance.registry import Registry

    old = ws.registry_path
    new = ws.home / temp_name(f"{old.name}.rebuild")
    actions: list[str] = []
    try:
        with Registry.open(ws, audit_key, path=new) as reg:
            with reg.transaction():
                actions += _rows_from_folders(ws, reg, salvage=old if damaged else None)
                details: dict[str, Any] = {"actions": list(actions), "replaced": damaged}
                if damaged is not None:
                    details.update(_damaged_facts(old))
                reg.audit("registry.rebuild", str(old), details)
                unknown = inventory.take(ws, inventory.Known.from_registry(reg)).unknown
            reg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for suffix in ("-wal", "-shm"):
            Path(f"{new}{suffix}").unlink(missing_ok=True)
        kept = _keep_aside(old)
        os.replace(new, old)
        fsync_dir(ws.home)
    except BaseException:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{new}{suffix}").unlink(missing_ok=True)
        raise
    # Versions salvaged from the damaged file get the metadata file they lacked, so the next
    # rebuild does not depend on a damaged registry again (after the swap: files of real,
    # registered versions only).
    try:
        with Registry.open(ws, audit_key) as reg, reg.transaction():
            written = reg.datasets.backfill_meta()
        actions += [f"wrote the missing metadata file of dataset {ref}" for ref in written]
    except (OSError, ApplianceError) as exc:
        actions.append(f"could not write the missing dataset metadata files ({exc})")
    first = (
        f"the registry was damaged ({damaged}); built a new one from the workspace folders"
        if damaged is not None
        else "there was no registry; built one from the workspace folders"
    )
    if kept is not None:
        first += f"; the damaged file is kept as {kept.name}"
    return (
        [first]
        + actions
        + [f"could not account for {line}; it was left in place" for line in unknown]
    )


def _keep_aside(path: Path) -> Path | None:
    """Keep the damaged registry (and its journal files) under a dated name, then let the new
    one take its place. The main file is linked, not moved, so there is never a moment
    without a ``registry.sqlite``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}")
    n = 1
    while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}-{n}")
    # A stale journal beside the new file could be replayed into it: move them first.
    for suffix in ("-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{target}{suffix}"))
    if not path.exists():
        return None
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)
    os.chmod(target, 0o600)
    return target


def _damaged_facts(path: Path) -> dict[str, Any]:
    """What the new audit log's first row records about the registry it replaces."""
    facts: dict[str, Any] = {"damaged_sha256": sha256_file(path)}
    try:
        with _read_only(path) as conn:
            head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if head is not None:
            facts["previous_audit_head"] = {"seq": head["seq"], "hash": head["hash"]}
    except sqlite3.Error as exc:
        facts["previous_audit_head"] = f"unreadable ({exc})"
    return facts


# -- rows from metadata files -------------------------------------------------------------------


def _columns(reg: Registry, table: str) -> set[str]:
    return {c.name for c in reg.core.db.table(table).columns}


def _metas(paths: list[Path]) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for path in paths:
        try:
            kind, record = read_meta_file(path)
        except IntegrityError:
            continue
        yield path, kind, record


def _rows_from_folders(ws: Workspace, reg: Registry, salvage: Path | None = None) -> list[str]:
    actions = _models(ws, reg)
    actions += _datasets(ws, reg)
    if salvage is not None:
        actions += _salvage_datasets(reg, salvage)
    actions += _runs(ws, reg)
    actions += _adapters(ws, reg)
    if salvage is not None:
        actions += _salvage_registry_only(reg, salvage)
    return actions


def _models(ws: Workspace, reg: Registry) -> list[str]:
    actions = []
    have = {r[0] for r in reg.conn.execute("SELECT name FROM base_models")}
    columns = _columns(reg, "base_models")
    for _path, kind, rec in _metas(sorted(ws.models_dir.glob(f"*/{META_FILE}"))):
        if kind != "base_model" or rec.get("name") in have:
            continue
        fields = {k: v for k, v in rec.items() if k in columns and k != "id"}
        fields.setdefault("created_at", now())
        fields.setdefault("created_by", os_user())
        reg.core.insert("base_models", fields)
        have.add(rec["name"])
        actions.append(f"added base model {rec['name']}")
    return actions


def _datasets(ws: Workspace, reg: Registry) -> list[str]:
    actions = []
    have = {
        (r[0], r[1]): r[2]
        for r in reg.conn.execute("SELECT name, version, object_id FROM dataset_versions")
    }
    columns = _columns(reg, "dataset_versions")
    found = list(_metas(sorted(ws.datasets_dir.glob(f"*{SIDECAR_SUFFIX}"))))
    # Two files claiming one version: an import killed before its commit left one behind and
    # the next import reused the number. The later one is the version the registry had.
    found.sort(key=lambda item: str(item[2].get("created_at", "")), reverse=True)
    for path, kind, rec in found:
        key = (rec.get("name"), rec.get("version"))
        if kind != "dataset_version" or key in have:
            if kind == "dataset_version" and have.get(key) != rec.get("object_id"):
                actions.append(
                    f"{path.relative_to(ws.home)} names dataset {key[0]}@{key[1]}, which is "
                    "registered with another file; left as it is"
                )
            continue
        fields = {k: v for k, v in rec.items() if k in columns and k != "id"}
        reg.core.insert("dataset_versions", fields)
        have[key] = rec.get("object_id")
        note = ""
        if rec.get("deleted_at") is None and not (ws.home / str(rec.get("path"))).is_file():
            note = f" (its file {rec.get('path')} is missing)"
        actions.append(f"added dataset {key[0]}@{key[1]}{note}")
    return actions


def _salvage_datasets(reg: Registry, damaged: Path) -> list[str]:
    """Dataset versions imported before datasets carried metadata, from the damaged file."""
    have = {(r[0], r[1]) for r in reg.conn.execute("SELECT name, version FROM dataset_versions")}
    columns = _columns(reg, "dataset_versions")
    try:
        with _read_only(damaged) as conn:
            rows = [dict(r) for r in conn.execute("SELECT * FROM dataset_versions")]
    except sqlite3.Error as exc:
        return [f"dataset versions could not be read from the damaged registry ({exc})"]
    actions = []
    for row in rows:
        if (row.get("name"), row.get("version")) in have:
            continue
        fields = {k: v for k, v in row.items() if k in columns and k != "id"}
        reg.core.insert("dataset_versions", fields)
        actions.append(f"salvaged dataset {row['name']}@{row['version']} from the damaged registry")
    return actions


def _runs(ws: Workspace, reg: Registry) -> list[str]:
    actions = []
    models = {r[1]: r[0] for r in reg.conn.execute("SELECT id, name FROM base_models")}
    have = {r[0] for r in reg.conn.execute("SELECT id FROM runs")}
    columns = _columns(reg, "runs")
    for _path, kind, rec in _metas(sorted(ws.runs_dir.glob(f"*/{META_FILE}"))):
        if kind != "run" or rec.get("id") in have:
            continue
        if rec.get("base_model") not in models:
            actions.append(f"skipped run {rec.get('id')}: its base model is not registered")
            continue
        ds_id = None
        if rec.get("dataset") is not None:
            found = reg.conn.execute(
                "SELECT id FROM dataset_versions WHERE name = ? AND version = ?",
                (rec["dataset"], rec.get("dataset_version")),
            ).fetchone()
            ds_id = found[0] if found else None
            if ds_id is None:
                actions.append(
                    f"run {rec['id']}: dataset {rec['dataset']}@{rec.get('dataset_version')} "
                    "is not registered; its lineage link is left empty"
                )
        fields = {k: v for k, v in rec.items() if k in columns}
        fields.update(base_model_id=models[rec["base_model"]], dataset_version_id=ds_id)
        reg.core.insert("runs", fields)
        have.add(rec["id"])
        actions.append(f"added run {rec['id']}")
    return actions


def _adapters(ws: Workspace, reg: Registry) -> list[str]:
    actions = []
    runs = {r[0] for r in reg.conn.execute("SELECT id FROM runs")}
    have = {(r[0], r[1]) for r in reg.conn.execute("SELECT name, version FROM adapter_versions")}
    columns = _columns(reg, "adapter_versions")
    for _path, kind, rec in _metas(sorted(ws.adapters_dir.glob(f"*/*/{META_FILE}"))):
        key = (rec.get("name"), rec.get("version"))
        if kind != "adapter_version" or key in have:
            continue
        fields = {k: v for k, v in rec.items() if k in columns and k != "id"}
        if fields.get("run_id") not in runs:
            fields["run_id"] = None
        reg.core.insert("adapter_versions", fields)
        have.add(key)
        actions.append(f"added adapter {key[0]}@{key[1]}")
    return actions


_TAGS_SQL = (
    "SELECT x.*, a.name AS a_name, a.version AS a_version FROM tags x "
    "JOIN adapter_versions a ON a.id = x.adapter_version_id"
)
_EXPORTS_SQL = (
    "SELECT x.*, a.name AS a_name, a.version AS a_version FROM exports x "
    "JOIN adapter_versions a ON a.id = x.adapter_version_id"
)
_EVALUATIONS_SQL = (
    "SELECT x.*, a.name AS a_name, a.version AS a_version, d.name AS d_name, "
    "d.version AS d_version FROM evaluations x "
    "JOIN adapter_versions a ON a.id = x.adapter_version_id "
    "JOIN dataset_versions d ON d.id = x.dataset_version_id"
)
_GOLDEN_SQL = (
    "SELECT x.*, d.name AS d_name, d.version AS d_version FROM golden_sets x "
    "JOIN dataset_versions d ON d.id = x.dataset_version_id"
)


def _salvage_registry_only(reg: Registry, damaged: Path) -> list[str]:
    """Tags, exports, evaluations and golden sets live only in the registry: keep what the
    damaged file still holds, re-pointed at the rebuilt rows by name and version."""
    adapters = {
        (r[0], r[1]): r[2]
        for r in reg.conn.execute("SELECT name, version, id FROM adapter_versions")
    }
    datasets = {
        (r[0], r[1]): r[2]
        for r in reg.conn.execute("SELECT name, version, id FROM dataset_versions")
    }
    actions: list[str] = []

    def rows(what: str, sql: str) -> list[dict[str, Any]]:
        try:
            with _read_only(damaged) as conn:
                return [dict(r) for r in conn.execute(sql)]
        except sqlite3.Error as exc:
            if "no such table" not in str(exc):  # an older schema simply has none
                actions.append(f"{what} could not be read from the damaged registry ({exc})")
            return []

    for tag in rows("tags", _TAGS_SQL):
        target = adapters.get((tag["a_name"], tag["a_version"]))
        if target is None:
            continue
        reg.conn.execute(
            "INSERT OR IGNORE INTO tags (name, tag, adapter_version_id, updated_at, updated_by) "
            "VALUES (?, ?, ?, ?, ?)",
            (tag["name"], tag["tag"], target, tag["updated_at"], tag["updated_by"]),
        )
        actions.append(f"salvaged tag {tag['name']}@{tag['tag']} -> version {tag['a_version']}")
    for ex in rows("exports", _EXPORTS_SQL):
        target = adapters.get((ex["a_name"], ex["a_version"]))
        if target is None:
            continue
        fields = {k: ex[k] for k in ("format", "path", "sha256", "details", "created_at")}
        reg.core.insert(
            "exports", {**fields, "created_by": ex["created_by"], "adapter_version_id": target}
        )
        actions.append(f"salvaged export of {ex['a_name']}@{ex['a_version']} ({ex['path']})")
    columns = _columns(reg, "evaluations")
    for ev in rows("evaluations", _EVALUATIONS_SQL):
        adapter = adapters.get((ev["a_name"], ev["a_version"]))
        dataset = datasets.get((ev["d_name"], ev["d_version"]))
        if adapter is None or dataset is None:
            continue
        fields = {k: v for k, v in ev.items() if k in columns and k != "id"}
        fields.update(adapter_version_id=adapter, dataset_version_id=dataset)
        reg.core.insert("evaluations", fields)
        actions.append(
            f"salvaged an evaluation of {ev['a_name']}@{ev['a_version']} on "
            f"{ev['d_name']}@{ev['d_version']}"
        )
    for gold in rows("golden sets", _GOLDEN_SQL):
        dataset = datasets.get((gold["d_name"], gold["d_version"]))
        if dataset is None:
            continue
        reg.conn.execute(
            "INSERT OR IGNORE INTO golden_sets (name, dataset_version_id, metric, updated_at, "
            "updated_by) VALUES (?, ?, ?, ?, ?)",
            (gold["name"], dataset, gold["metric"], gold["updated_at"], gold["updated_by"]),
        )
        actions.append(f"salvaged the golden set of {gold['name']}")
    return actions


__all__ = ["rebuild_index", "registry_health"]
