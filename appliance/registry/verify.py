"""``appliance verify``: the registry, every artifact's hash and the audit chain, in one report;
and ``--rebuild-index``: registry rows rebuilt from the folders' own ``meta.json``."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import IntegrityError, RegistryError
from appliance.folders import META_FILE, artifact_sha256, read_meta
from appliance.fsutil import sha256_file
from appliance.registry.refs import now, os_user
from appliance.workspace import Workspace

if TYPE_CHECKING:
    from appliance.registry import Registry

Progress = Callable[[int, int, str], None]


@dataclass
class Section:
    """One part of the report: what was checked, how many, and what was wrong."""

    title: str
    checked: int = 0
    findings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    """The whole report; ``ok`` is False when any section has a finding."""

    sections: list[Section] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(s.findings for s in self.sections)

    @property
    def findings(self) -> list[str]:
        return [f for s in self.sections for f in s.findings]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sections": [
                {
                    "title": s.title,
                    "checked": s.checked,
                    "findings": s.findings,
                    "warnings": s.warnings,
                }
                for s in self.sections
            ],
        }


def verify_workspace(ws: Workspace, reg: Registry) -> VerifyReport:
    """Run every check and collect the findings (this never stops at the first one)."""
    from appliance.models.use import verify_model_files

    report = VerifyReport()

    db = Section("registry database (SQLite integrity_check, foreign keys)", checked=1)
    db.findings = [f"registry: {p}" for p in reg.integrity_check()]
    report.sections.append(db)

    models = Section("base models (every file's sha256 against its manifest)")
    for model in reg.base_models():
        models.checked += 1
        models.findings += verify_model_files(ws, model, full=True)
    models.findings += _unregistered(ws.models_dir, {m["name"] for m in reg.base_models()}, "model")
    report.sections.append(models)

    datasets = Section("dataset versions (encrypted file's sha256)")
    for ds in reg.dataset_versions(include_deleted=True):
        if not ds.get("path") or not ds.get("file_sha256"):
            continue
        path = ws.home / ds["path"]
        if not path.is_file():
            if ds["deleted_at"] is None:
                datasets.findings.append(f"dataset {ds['name']}@{ds['version']}: {path} is missing")
            continue
        datasets.checked += 1
        if sha256_file(path) != ds["file_sha256"]:
            datasets.findings.append(
                f"dataset {ds['name']}@{ds['version']}: {path} changed (sha256 differs)"
            )
    report.sections.append(datasets)

    adapters = Section("adapter versions (sha256 of each adapter)")
    for ad in reg.adapter_versions():
        adapters.checked += 1
        problem = _check_artifact(ws.home / ad["path"], ad["sha256"])
        if problem:
            adapters.findings.append(f"adapter {ad['ref']}: {problem}")
    report.sections.append(adapters)

    exports = Section("exports (sha256 of each exported file or folder)")
    for ex in reg.exports():
        exports.checked += 1
        path = Path(ex["path"])
        inside = not path.is_absolute()
        full = ws.home / path if inside else path
        problem = _check_artifact(full, ex["sha256"])
        if problem and not inside and not full.exists():
            exports.warnings.append(f"export of {ex['adapter']}: {full} is gone (moved away?)")
        elif problem:
            exports.findings.append(f"export of {ex['adapter']}: {problem}")
    report.sections.append(exports)

    runs = Section("runs (folders present)")
    for run in reg.runs():
        runs.checked += 1
        if run["path"] and not (ws.home / run["path"]).is_dir():
            runs.warnings.append(f"run {run['id']}: folder {ws.home / run['path']} is missing")
    report.sections.append(runs)

    chain = reg.verify_audit()
    audit = Section("audit log (hash chain)", checked=chain.rows)
    audit.findings = [f"audit row {seq}: {what}" for seq, what in chain.problems]
    report.sections.append(audit)
    return report


def _check_artifact(path: Path, expected: str) -> str | None:
    try:
        actual = artifact_sha256(path)
    except IntegrityError:
        return f"{path} is missing"
    if actual != expected:
        return f"{path} changed since it was registered (sha256 differs)"
    return None


def _unregistered(folder: Path, known: set[str], what: str) -> list[str]:
    if not folder.is_dir():
        return []
    return [
        f"{what} folder {p} is not in the registry (run 'appliance verify --rebuild-index')"
        for p in sorted(folder.iterdir())
        if p.is_dir() and p.name not in known and (p / META_FILE).is_file()
    ]


# -- rebuilding the index ----------------------------------------------------------------------


def rebuild_index(ws: Workspace, audit_key: bytes | None = None) -> list[str]:
    """Re-create missing registry rows from the ``meta.json`` of model, run and adapter folders.

    A damaged database (unopenable, or failing ``integrity_check``) is first moved aside as
    ``registry.sqlite.damaged-TIME`` and a new one is created; dataset versions (which have no
    folder metadata) are salvaged from the damaged copy when it can still be read.
    Call with the workspace writer lock held.

    Returns:
        One line per action taken, for the report.
    """
    from appliance.registry import Registry

    actions: list[str] = []
    damaged: Path | None = None
    try:
        reg = Registry.open(ws, audit_key)
        if reg.integrity_check():
            reg.close()
            raise RegistryError("integrity_check failed")
    except RegistryError as exc:
        damaged = _move_aside(ws.registry_path)
        actions.append(f"moved the damaged registry ({exc}) to {damaged}")
        reg = Registry.open(ws, audit_key)
    with reg, reg.transaction():
        if damaged is not None:
            actions += _salvage_datasets(reg, damaged)
        actions += _rebuild_from_folders(ws, reg)
        reg.audit("registry.rebuild", str(ws.registry_path), {"actions": actions})
    return actions


def _move_aside(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{target}{suffix}"))
    return target


def _salvage_datasets(reg: Registry, damaged: Path) -> list[str]:
    try:
        conn = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM dataset_versions")]
        conn.close()
    except sqlite3.Error as exc:
        return [f"dataset versions could not be salvaged from the damaged registry ({exc})"]
    for row in rows:
        row.pop("id", None)
        reg._insert("dataset_versions", row)
    return [f"salvaged {len(rows)} dataset version row(s) from the damaged registry"]


def _metas(folder: Path, depth: int) -> list[tuple[Path, str, dict[str, Any]]]:
    pattern = "/".join(["*"] * depth) + f"/{META_FILE}"
    out = []
    for meta in sorted(folder.glob(pattern)):
        try:
            kind, record = read_meta(meta.parent)
        except IntegrityError:
            continue
        out.append((meta.parent, kind, record))
    return out


def _rebuild_from_folders(ws: Workspace, reg: Registry) -> list[str]:
    actions: list[str] = []
    models = {m["name"]: m["id"] for m in reg.base_models()}
    for _folder, kind, rec in _metas(ws.models_dir, 1):
        if kind != "base_model" or rec.get("name") in models:
            continue
        columns = {c.name for c in reg.db.table("base_models").columns}
        fields = {k: v for k, v in rec.items() if k in columns and k not in ("id", "name")}
        fields.setdefault("created_at", now())
        fields.setdefault("created_by", os_user())
        models[rec["name"]] = reg._insert("base_models", {"name": rec["name"], **fields})
        actions.append(f"added base model {rec['name']}")
    runs = {r["id"] for r in reg.runs()}
    for _folder, kind, rec in _metas(ws.runs_dir, 1):
        if kind != "run" or rec.get("id") in runs:
            continue
        if rec.get("base_model") not in models:
            actions.append(f"skipped run {rec.get('id')}: its base model is not registered")
            continue
        ds_id = None
        if rec.get("dataset") is not None:
            found = reg._query(
                "SELECT id FROM dataset_versions WHERE name = ? AND version = ?",
                (rec["dataset"], rec.get("dataset_version")),
            )
            ds_id = found[0]["id"] if found else None
            if ds_id is None:
                actions.append(
                    f"run {rec['id']}: dataset {rec['dataset']}@{rec.get('dataset_version')} "
                    "is not registered; its lineage link is left empty"
                )
        columns = {c.name for c in reg.db.table("runs").columns}
        fields = {k: v for k, v in rec.items() if k in columns}
        fields.update(base_model_id=models[rec["base_model"]], dataset_version_id=ds_id)
        reg._insert("runs", fields)
        runs.add(rec["id"])
        actions.append(f"added run {rec['id']}")
    have = {(a["name"], a["version"]) for a in reg.adapter_versions()}
    columns = {c.name for c in reg.db.table("adapter_versions").columns}
    for _folder, kind, rec in _metas(ws.adapters_dir, 2):
        key = (rec.get("name"), rec.get("version"))
        if kind != "adapter_version" or key in have:
            continue
        fields = {k: v for k, v in rec.items() if k in columns and k != "id"}
        if fields.get("run_id") not in runs:
            fields["run_id"] = None
        reg._insert("adapter_versions", fields)
        have.add((rec["name"], rec["version"]))
        actions.append(f"added adapter {rec['name']}@{rec['version']}")
    return actions
