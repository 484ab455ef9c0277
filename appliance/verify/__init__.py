"""``appliance verify``: the registry, every artifact's hash, the key slots, the audit chain
and every file in the workspace, in one report (``--rebuild-index`` lives in
:mod:`appliance.registry.rebuild`; the desktop app runs it as the job in :mod:`.job`).

It sits above the layers it checks (registry, vault, models), so it imports each of them
rather than the registry reaching up into the others.

Each section runs on its own: a damaged page that makes one table unreadable is a finding of
that section, and the others still run, so the report always ends with what to do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import leftovers
from appliance.errors import IntegrityError
from appliance.folders import artifact_sha256, sidecar_path
from appliance.fsutil import sha256_file
from appliance.models.use import verify_model_files
from appliance.registry import inventory
from appliance.registry.failures import REBUILD_HINT
from appliance.registry.schema import trigger_problems
from appliance.units import format_bytes
from appliance.vault import keyslots
from appliance.workspace import Workspace

if TYPE_CHECKING:
    from appliance.registry import Registry

Check = Callable[["Section", Workspace, "Registry"], None]


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
    report = VerifyReport()
    checks: list[tuple[str, Check]] = [
        ("registry database (SQLite integrity_check, foreign keys, triggers)", _database),
        ("key slots (every slot file readable)", _key_slots),
        ("base models (every file's sha256 against its manifest)", _models),
        ("dataset versions (encrypted file's sha256, metadata beside it)", _datasets),
        ("adapter versions (sha256 of each adapter)", _adapters),
        ("exports (sha256 of each exported file or folder)", _exports),
        ("runs (folders present)", _runs),
        ("audit log (hash chain)", _audit),
        ("workspace files (unknown files, leftovers of killed commands)", _files),
    ]
    for title, check in checks:
        section = Section(title)
        try:
            check(section, ws, reg)
        except sqlite3.DatabaseError as exc:
            section.findings.append(
                f"registry: this part cannot be read ({exc}); the registry is damaged: "
                f"{REBUILD_HINT}"
            )
        report.sections.append(section)
    return report


def _database(section: Section, _ws: Workspace, reg: Registry) -> None:
    section.checked = 1
    section.findings += [f"registry: {p}" for p in reg.integrity_check()]
    section.findings += [
        f"registry: {p}: the audit table can be changed without SQLite refusing; find out who "
        "did it, then run 'appliance verify --rebuild-index' to restore it"
        for p in trigger_problems(reg.conn)
    ]


def _key_slots(section: Section, ws: Workspace, _reg: Registry) -> None:
    slots, damaged = keyslots.scan_slots(ws)
    section.checked = len(slots) + len(damaged)
    section.findings += [
        f"key slot {d.label}: {d.reason}; restore it from backup, or remove it "
        f"('appliance passphrase remove {d.label}') and add it again"
        for d in damaged
    ]
    if len({(s.vault_id, s.key_id) for s in slots}) > 1:
        section.findings.append(
            f"key slots in {ws.keys_dir} belong to different workspaces; remove the ones copied "
            "from elsewhere"
        )


def _models(section: Section, ws: Workspace, reg: Registry) -> None:
    for model in reg.models.all():
        section.checked += 1
        section.findings += verify_model_files(ws, model, full=True)


def _datasets(section: Section, ws: Workspace, reg: Registry) -> None:
    for ds in reg.datasets.versions(include_deleted=True):
        if not ds.get("path"):
            continue
        label = f"dataset {ds['name']}@{ds['version']}"
        path = ws.home / ds["path"]
        if not sidecar_path(path).is_file():
            section.warnings.append(
                f"{label}: no metadata file beside it (imported by an older release), so a "
                "rebuild could not recover it; 'appliance verify --rebuild-index' writes it"
            )
        if not ds.get("file_sha256"):
            continue
        if not path.is_file():
            if ds["deleted_at"] is None:
                section.findings.append(f"{label}: {path} is missing")
            continue
        if ds["deleted_at"] is not None:
            section.warnings.append(
                f"{label} was deleted but its file {path} is still there (an interrupted "
                "delete); 'appliance dataset delete' of it again, or remove the file"
            )
            continue
        section.checked += 1
        if sha256_file(path) != ds["file_sha256"]:
            section.findings.append(f"{label}: {path} changed (sha256 differs)")


def _adapters(section: Section, ws: Workspace, reg: Registry) -> None:
    for ad in reg.adapters.versions():
        section.checked += 1
        problem = _check_artifact(ws.home / ad["path"], ad["sha256"])
        if problem:
            section.findings.append(f"adapter {ad['ref']}: {problem}")


def _exports(section: Section, _ws: Workspace, reg: Registry) -> None:
    for ex in reg.exports.all():
        section.checked += 1
        path = Path(ex["path"])  # absolute: exports lie outside the workspace
        problem = _check_artifact(path, ex["sha256"])
        if problem and not path.exists():
            section.warnings.append(f"export of {ex['adapter']}: {path} is gone (moved away?)")
        elif problem:
            section.findings.append(f"export of {ex['adapter']}: {problem}")


def _runs(section: Section, ws: Workspace, reg: Registry) -> None:
    for run in reg.runs.all():
        section.checked += 1
        if run["path"] and not (ws.home / run["path"]).is_dir():
            section.warnings.append(f"run {run['id']}: folder {ws.home / run['path']} is missing")


def _audit(section: Section, _ws: Workspace, reg: Registry) -> None:
    chain = reg.verify_audit()
    section.checked = chain.rows
    section.findings = [f"audit row {seq}: {what}" for seq, what in chain.problems]
    section.warnings = [
        f"audit row {seq}: {what} (acknowledged in the log)" for seq, what in chain.acknowledged
    ]


def _files(section: Section, ws: Workspace, reg: Registry) -> None:
    inv = inventory.take(ws, inventory.Known.from_registry(reg))
    section.checked = 1
    section.findings += [f"unknown file {line} (left in place)" for line in inv.unknown]
    section.warnings += inv.kept
    for lo in leftovers.find(ws.home):
        rel = lo.path.relative_to(ws.home)
        size = format_bytes(lo.size())
        if lo.alive:
            section.warnings.append(f"{rel} ({size}): in use by running process {lo.pid}")
        elif lo.removable():
            who = f"process {lo.pid}, which is gone" if lo.pid else "a command that was killed"
            section.warnings.append(
                f"{rel} ({size}): leftover of {who}; the next command that changes the "
                "workspace removes it"
            )
        else:
            section.warnings.append(f"{rel} ({size}): leftover of an unknown process; kept")


def _check_artifact(path: Path, expected: str) -> str | None:
    try:
        actual = artifact_sha256(path)
    except IntegrityError:
        return f"{path} is missing"
    if actual != expected:
        return f"{path} changed since it was registered (sha256 differs)"
    return None
