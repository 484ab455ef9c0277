"""The lineage of an adapter version as a typed record: run, base, data, settings, results.

:func:`lineage_of` gathers what ``reg.adapters.lineage`` knows and what only the run folder
knows (the device it trained on, from the ``started`` event of its ``metrics.jsonl``), plus its
export history and, when the registry records them, its evaluation results. It lives above the
registry and the training runs it joins, so the registry reads no run folder itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import NotFoundError
from appliance.events import EventError
from appliance.registry import Registry
from appliance.registry.catalog import finite_number
from appliance.registry.refs import loads
from appliance.registry.rows import EvaluationRow
from appliance.training import events as ev


@dataclass(frozen=True)
class RunSummary:
    """The training run that made a version."""

    id: str
    state: str
    started_at: str | None
    finished_at: str | None
    wall_s: float | None
    """Training seconds over every launch of the run."""
    peak_memory: int | None
    """Peak bytes: torch's peak allocation on a GPU, the process's peak RSS on a CPU."""
    device: str | None
    """Where it trained (``cuda:0``, ``cpu``...), from its ``started`` event."""
    folder: Path | None
    """The run folder (its ``metrics.jsonl`` holds the curves)."""


@dataclass(frozen=True)
class BaseModelRef:
    name: str
    sha256: str
    architecture: str | None = None
    parameters: int | None = None


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: int
    sha256: str | None
    rows: int | None = None
    deleted_at: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ExportRecord:
    """One export of a version (recorded), or one attempt that failed verification (audited)."""

    format: str
    path: str
    created_at: str
    created_by: str
    passed: bool | None
    """Whether its verification passed (None: not recorded, e.g. an export from before the
    figures were kept)."""
    verification: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    """Digest of the export's files (recorded exports only)."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float | None:
        return finite_number(self.verification.get("max_abs_diff"))


@dataclass(frozen=True)
class Lineage:
    """Everything that made an adapter version, and what became of it."""

    ref: str
    name: str
    version: int
    tags: tuple[str, ...]
    sha256: str
    created_at: str
    created_by: str
    deleted_at: str | None
    run: RunSummary | None
    base_model: BaseModelRef | None
    dataset: DatasetRef | None
    config: dict[str, Any]
    """The full training configuration (empty when no run is recorded)."""
    seed: int | None
    lib_versions: dict[str, Any]
    metrics: dict[str, Any]
    """Final metrics: train_loss, eval_loss, tokens_seen, steps, wall_s, peak_memory."""
    exports: tuple[ExportRecord, ...]
    evaluations: tuple[EvaluationRow, ...] = ()
    """Evaluation rows of this version (``appliance eval``), oldest first."""


def _started(folder: Path) -> ev.Started | None:
    """The first ``started`` event of a run's ``metrics.jsonl``, read without parsing the
    thousands of step and memory lines around it."""
    path = folder / ev.METRICS_FILE
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if b'"type":"started"' in line:
                    event = ev.parse_event(line, where=f"{path.name} line {number}")
                    return event if isinstance(event, ev.Started) else None
    except (OSError, EventError):
        return None
    return None


def export_history(reg: Registry, ref: str) -> tuple[ExportRecord, ...]:
    """The exports of version ``ref``, and its attempts that failed verification, oldest first.

    Recorded exports come from the registry's exports rows; failed ones from the audit log's
    ``export.failed`` rows (nothing else of them exists: their files were removed).
    """
    adapter = reg.adapters.version(ref, include_deleted=True)
    records = []
    for row in reg.exports.all(adapter["ref"]):
        details = row.get("details") or {}
        verification = details.get("verification") or {}
        passed = verification.get("passed") if verification else None
        records.append(
            ExportRecord(
                format=row["format"],
                path=row["path"],
                created_at=row["created_at"],
                created_by=row["created_by"],
                passed=bool(passed) if passed is not None else None,
                verification=verification,
                sha256=row["sha256"],
                details=details,
            )
        )
    for failed in reg.audit_rows(action="export.failed"):
        if failed["object"] != adapter["ref"]:
            continue
        details = (
            failed["details"] if isinstance(failed["details"], dict) else loads(failed["details"])
        )
        records.append(
            ExportRecord(
                format=str(details.get("format", "?")),
                path=str(details.get("path", "?")),
                created_at=failed["time"],
                created_by=failed["user"],
                passed=False,
                verification=details.get("verification") or {},
            )
        )
    return tuple(sorted(records, key=lambda r: r.created_at))


def lineage_of(reg: Registry, ref: str) -> Lineage:
    """The lineage of adapter version ``ref`` (a deleted version's too).

    Raises:
        NotFoundError: no such version.
    """
    data = reg.adapters.lineage(ref)
    metrics = data["metrics"] or {}
    run: RunSummary | None = None
    if data["run"] is not None:
        row = reg.runs.get(data["run"]["id"])
        folder = reg.ws.home / row["path"] if row["path"] else None
        started = _started(folder) if folder is not None else None
        wall = finite_number(metrics.get("wall_s"))
        peak = metrics.get("peak_memory")
        run = RunSummary(
            id=row["id"],
            state=row["state"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            wall_s=wall,
            peak_memory=int(peak) if isinstance(peak, int | float) else None,
            device=started.device if started is not None else None,
            folder=folder,
        )
    base = data["base_model"]
    ds = data["dataset"]
    try:
        evaluations = tuple(reg.evaluations.all(data["ref"]))
    except NotFoundError:
        evaluations = ()  # a deleted version's results are not listed by the registry
    return Lineage(
        ref=data["ref"],
        name=data["name"],
        version=int(data["version"]),
        tags=tuple(data["tags"]),
        sha256=data["sha256"],
        created_at=data["created_at"],
        created_by=data["created_by"],
        deleted_at=data.get("deleted_at"),
        run=run,
        base_model=None
        if base is None
        else BaseModelRef(base["name"], base["sha256"], base["architecture"], base["parameters"]),
        dataset=None
        if ds is None
        else DatasetRef(ds["name"], int(ds["version"]), ds["sha256"], ds["rows"], ds["deleted_at"]),
        config=data["config"] or {},
        seed=data["seed"],
        lib_versions=data["lib_versions"] or {},
        metrics=metrics,
        exports=export_history(reg, data["ref"]),
        evaluations=evaluations,
    )
