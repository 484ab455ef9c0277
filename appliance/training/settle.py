"""Settling a run whose training session has ended: finished, stopped or failed, with reasons.

The outcome of a session is read from ``metrics.jsonl`` (the events after the session's start
recorded in ``session.json``), so any process holding the vault can settle a run: the parent
that followed the child, a later ``appliance run list``, or the GUI at start-up. A finished
run's adapter, sealed by the run key in the run folder, is stored through the vault as NAME@N.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance import adapters
from appliance.errors import WorkspaceLockedError
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training.runfolder import ADAPTER_FILE, RUN_KEY_FILE, RunSpec, read_session
from appliance.vault import Vault
from appliance.vault.objects import read_object

LOST = "process lost"
TERMINAL = (ev.Finished, ev.Stopped, ev.Failed)


def run_dir(vault: Vault, run: dict[str, Any]) -> Path:
    return vault.ws.home / str(run["path"])


def session_events(folder: Path) -> list[ev.Event]:
    """The events of the latest session (those after its start offset in ``metrics.jsonl``)."""
    metrics = folder / ev.METRICS_FILE
    if not metrics.exists():
        return []
    offset = int(read_session(folder).get("metrics_offset", 0))
    with open(metrics, "rb") as handle:
        handle.seek(offset)
        tail = handle.read()
    found = []
    for raw in tail.split(b"\n"):
        if raw.strip():
            try:
                found.append(ev.parse_event(raw))
            except ev.EventError:
                continue  # a line torn by a kill
    return found


def describe_exit(code: int | None) -> str:
    """Why a child ended without reporting, in words."""
    if code is None:
        return LOST
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = "; the system may have run out of memory" if -code == signal.SIGKILL else ""
        return f"the training process was killed by {name}{hint}"
    return f"the training process exited with code {code} without a report"


@dataclass
class Outcome:
    """How a session ended, as settled in the registry."""

    run_id: str
    state: str
    message: str | None = None
    adapter: str | None = None
    """NAME@N of the registered adapter when finished."""
    finished: ev.Finished | None = None


def lib_versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "safetensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def finalize(
    vault: Vault,
    reg: Registry,
    run_id: str,
    exit_code: int | None = None,
    reason: str | None = None,
) -> Outcome:
    """Settle a session that has ended: register the adapter, or record stopped / failed.

    ``exit_code`` (negative: killed by that signal) or ``reason`` explain a child that ended
    without a final event; without either the run failed with "process lost".

    Safe to call twice and from two processes (a foreground CLI and a ``run list``): under the
    writer lock, a run that is no longer marked running is left as it is.
    """
    with vault.ws.writer("train: finish run"):
        run = reg.run(run_id)
        if run["state"] not in ("running", "queued"):
            return _settled(reg, run)
        folder = run_dir(vault, run)
        found = [e for e in session_events(folder) if isinstance(e, TERMINAL)]
        last = found[-1] if found else None
        if isinstance(last, ev.Finished) and (folder / ADAPTER_FILE).exists():
            return _register(vault, reg, run, folder, last)
        if isinstance(last, ev.Stopped):
            reg.update_run(run_id, state="stopped")
            return Outcome(run_id, "stopped", f"stopped at step {last.step}")
        if isinstance(last, ev.Failed):
            reg.update_run(run_id, state="failed", failure_reason=last.message)
            return Outcome(run_id, "failed", last.message)
        reason = reason or describe_exit(exit_code)
        reg.update_run(run_id, state="failed", failure_reason=reason)
        return Outcome(run_id, "failed", reason)


def _register(
    vault: Vault, reg: Registry, run: dict[str, Any], folder: Path, done: ev.Finished
) -> Outcome:
    spec = RunSpec.load(folder)
    run_key = bytes(vault.read(folder / RUN_KEY_FILE, what=f"the key of run {run['id']}"))
    label = f"the adapter of run {run['id']}"
    # Stored as packed bytes, checked by header: settling needs no torch (the GUI settles too).
    blob = bytes(read_object(folder / ADAPTER_FILE, run_key, what=label))
    adapters.check_packed(blob, label)
    metrics = {
        "train_loss": done.train_loss,
        "eval_loss": done.eval_loss,
        "tokens_seen": done.tokens_seen,
        "steps": done.step,
        "wall_s": done.total_wall_s if done.total_wall_s is not None else done.wall_s,
        "peak_memory": done.peak_memory,
    }
    version = adapters.store(
        vault,
        reg,
        spec.adapter_name,
        blob,
        run_id=run["id"],
        metrics=metrics,
        lib_versions=lib_versions(),
    )
    reg.update_run(run["id"], state="finished")
    (folder / ADAPTER_FILE).unlink(missing_ok=True)
    ref = f"{spec.adapter_name}@{version}"
    return Outcome(run["id"], "finished", None, ref, done)


def _settled(reg: Registry, run: dict[str, Any]) -> Outcome:
    refs = [a["ref"] for a in reg.adapter_versions() if a["run_id"] == run["id"]]
    return Outcome(run["id"], run["state"], run["failure_reason"], refs[-1] if refs else None)


def run_adapters(reg: Registry, run_id: str) -> list[str]:
    """NAME@N of the adapter versions a run produced."""
    return [a["ref"] for a in reg.adapter_versions() if a["run_id"] == run_id]


def process_alive(pid: int | None, run_id: str) -> bool:
    """Whether ``pid`` is still this run's training process (not a zombie, not a reused PID)."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
        return (
            status not in ("Z", "X")
            and "appliance.training.worker" in cmdline
            and (run_id in cmdline)
        )
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reconcile(vault: Vault, reg: Registry) -> list[Outcome]:
    """Settle every run marked running whose process is gone (finished, stopped or failed).

    A run whose child ended without a final event becomes ``failed`` with the reason
    "process lost": a run never hangs in "running".
    """
    settled = []
    for run in reg.runs("running"):
        if not process_alive(run["pid"], run["id"]):
            settled.append(finalize(vault, reg, run["id"]))
    return settled


def try_reconcile(vault: Vault, reg: Registry) -> list[Outcome]:
    """:func:`reconcile`, skipped when another command holds the workspace for long."""
    try:
        return reconcile(vault, reg)
    except WorkspaceLockedError:
        return []
