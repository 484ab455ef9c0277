"""Every run as a list shows it: state (lost included), model, data, adapter, message, folder.

The registry keeps a run's state as ``queued``, ``running``, ``finished``, ``stopped`` or
``failed``. A person also wants to see a run whose process died without a word as *lost*,
whether it is still marked running (nobody has settled it yet) or was settled as failed with
the reason "process lost". :func:`run_summaries` reads that off the registry and ``/proc``
(no torch, no Qt), for the desktop app's runs list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.registry import Registry
from appliance.training.process import LOST, process_alive

LOST_STATE = "lost"


@dataclass(frozen=True)
class RunSummary:
    """One run, for a list."""

    run_id: str
    state: str
    """queued, running, finished, stopped, failed or lost."""
    model: str
    dataset: str
    """NAME@VERSION."""
    adapters: tuple[str, ...]
    """NAME@N of the adapter versions it produced."""
    created: str
    """ISO time the run was created."""
    message: str
    """Why it failed or was lost (empty otherwise)."""
    folder: Path
    pid: int | None
    live: bool
    """Its training process is running now."""
    config: dict[str, Any]


def run_summaries(home: Path, reg: Registry) -> list[RunSummary]:
    """Every run of the workspace at ``home``, newest first."""
    produced: dict[str, list[str]] = {}
    for adapter in reg.adapters.versions():
        if adapter.get("run_id"):
            produced.setdefault(str(adapter["run_id"]), []).append(str(adapter["ref"]))
    found = []
    for run in reversed(reg.runs.all()):
        live = run["state"] == "running" and process_alive(run["pid"], run["id"])
        state = str(run["state"])
        message = str(run["failure_reason"] or "")
        if (state == "running" and not live) or (state == "failed" and message == LOST):
            state = LOST_STATE
            message = message or LOST
        found.append(
            RunSummary(
                run_id=str(run["id"]),
                state=state,
                model=str(run["base_model"] or "-"),
                dataset=f"{run['dataset']}@{run['dataset_version']}" if run["dataset"] else "-",
                adapters=tuple(produced.get(str(run["id"]), ())),
                created=str(run["created_at"] or ""),
                message=message,
                folder=home / str(run["path"]),
                pid=run["pid"],
                live=live,
                config=dict(run.get("config") or {}),
            )
        )
    return found
