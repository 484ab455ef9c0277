"""Training runs in the registry (``reg.runs``), and the ``meta.json`` of each run folder."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from appliance.errors import NotFoundError, RegistryError
from appliance.folders import write_meta
from appliance.registry.base_models import BaseModels
from appliance.registry.core import Core
from appliance.registry.dataset_versions import DatasetVersions
from appliance.registry.refs import check_name, now
from appliance.registry.rows import RunRow
from appliance.registry.schema import RUN_STATES

# A finished run is history; the others may still change (a stopped or failed run resumes).
_RUN_TRANSITIONS = {
    "queued": {"running", "stopped", "failed", "finished"},
    "running": {"running", "stopped", "failed", "finished"},
    "stopped": {"queued", "running", "failed"},
    "failed": {"queued", "running", "failed"},
    "finished": set(),
}

_RUN_SELECT = """
SELECT r.*, m.name AS base_model, m.sha256 AS base_model_sha256,
       d.name AS dataset, d.version AS dataset_version, d.sha256 AS dataset_sha256
FROM runs r
LEFT JOIN base_models m ON m.id = r.base_model_id
LEFT JOIN dataset_versions d ON d.id = r.dataset_version_id
"""


class Runs:
    """The ``runs`` table; a run names the base model and dataset version it trains on."""

    def __init__(self, core: Core, models: BaseModels, datasets: DatasetVersions) -> None:
        self._core = core
        self._models = models
        self._datasets = datasets

    def add(
        self,
        *,
        base_model: str,
        config: dict[str, Any],
        dataset: str | None = None,
        dataset_version: int | None = None,
        seed: int | None = None,
        path: str | None = None,
        run_id: str | None = None,
        state: str = "queued",
        pid: int | None = None,
    ) -> str:
        """Record a new training run (and write its folder's ``meta.json``); returns its id.

        Args:
            base_model: name of the base model it trains on.
            config: the full training configuration (JSON-serialisable).
            dataset: dataset name; ``dataset_version`` None means its latest version.
            dataset_version: the version trained on.
            seed: the random seed (also expected inside ``config``).
            path: the run folder relative to the workspace home (default ``runs/<id>``).
            run_id: an id chosen by the caller; by default ``run-YYYYmmdd-HHMMSS-xxxxxx``.
            state: the initial state.
            pid: the training process, when already started.
        """
        if state not in RUN_STATES:
            raise RegistryError(f"unknown run state {state!r} (states: {', '.join(RUN_STATES)})")
        run_id = run_id or new_run_id()
        check_name(run_id, "run id")
        path = path or f"runs/{run_id}"
        core = self._core
        with core.transaction():
            model = self._models.get(base_model)
            ds = self._datasets.version(dataset, dataset_version) if dataset is not None else None
            stamp = core.stamp()
            fields = {
                "id": run_id,
                "state": state,
                "pid": pid,
                "base_model_id": model["id"],
                "dataset_version_id": ds["id"] if ds else None,
                "config": config,
                "seed": seed,
                "path": path,
                **stamp,
                "started_at": stamp["created_at"] if state == "running" else None,
                "updated_at": stamp["created_at"],
            }
            if core.query("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
                raise RegistryError(f"a run with id {run_id!r} exists already")
            core.insert("runs", fields)
            core.audit(
                "run.create",
                run_id,
                {
                    "base_model": base_model,
                    "dataset": f"{ds['name']}@{ds['version']}" if ds else None,
                    "seed": seed,
                },
            )
            self._write_meta(run_id)
        return run_id

    def update(
        self,
        run_id: str,
        *,
        state: str | None = None,
        pid: int | None = None,
        failure_reason: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> RunRow:
        """Change a run's state (and pid / failure reason); audits state changes.

        Raises:
            RegistryError: the state change is not allowed (e.g. a finished run cannot restart).
        """
        core = self._core
        with core.transaction():
            run = self.get(run_id)
            changes: dict[str, Any] = {"updated_at": now()}
            if state is not None and state != run["state"]:
                if state not in _RUN_TRANSITIONS.get(run["state"], set()):
                    raise RegistryError(f"run {run_id} is {run['state']}; it cannot become {state}")
                changes["state"] = state
                if state == "running" and run["started_at"] is None:
                    changes["started_at"] = changes["updated_at"]
                if state in ("stopped", "failed", "finished"):
                    changes["finished_at"] = changes["updated_at"]
                    changes["pid"] = None
                elif state in ("queued", "running"):
                    changes["finished_at"] = None
                    changes["failure_reason"] = None
            if pid is not None:
                changes["pid"] = pid
            if failure_reason is not None:
                changes["failure_reason"] = failure_reason
            if config is not None:
                changes["config"] = config
            core.db.table("runs").update(run_id, core.encode("runs", changes))
            if "state" in changes:
                core.audit(
                    f"run.{state}",
                    run_id,
                    {"from": run["state"], "reason": failure_reason}
                    if failure_reason
                    else {"from": run["state"]},
                )
            self._write_meta(run_id)
            return self.get(run_id)

    def get(self, run_id: str) -> RunRow:
        """One run, with ``base_model`` and ``dataset`` names joined in.

        Raises:
            NotFoundError: no run has that id.
        """
        rows = self._core.query(f"{_RUN_SELECT} WHERE r.id = ?", (run_id,))
        if not rows:
            raise NotFoundError(f"no run with id {run_id!r}; 'appliance run list' shows the runs")
        return self._typed(rows[0])

    def all(self, state: str | None = None) -> list[RunRow]:
        """Every run (optionally in one state), oldest first."""
        if state is None:
            rows = self._core.query(f"{_RUN_SELECT} ORDER BY r.created_at, r.id")
        else:
            rows = self._core.query(
                f"{_RUN_SELECT} WHERE r.state = ? ORDER BY r.created_at", (state,)
            )
        return [self._typed(r) for r in rows]

    def _write_meta(self, run_id: str) -> None:
        run = self.get(run_id)
        record = {k: v for k, v in run.items() if k not in ("base_model_id", "dataset_version_id")}
        write_meta(self._core.ws.home / Path(str(run["path"])), "run", record)

    def _typed(self, row: dict[str, Any]) -> RunRow:
        return cast(RunRow, self._core.row("runs", row))


def new_run_id() -> str:
    """A sortable, unique run id such as ``run-20260101-120000-a1b2c3``."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
