"""The parent side of training: create a run, start the child, hand over keys, follow, finish.

Used by ``appliance train`` / ``appliance run ...`` now and by the GUI later (which starts the
same :func:`worker_command` through QProcess, writes :func:`key_line` to its stdin and parses
its stdout with :func:`appliance.training.events.parse_event`).

Keys: the child gets the data key of its one dataset object and the run key, never the master
key. The run key is random per run and kept in the run folder sealed by the master key
(``run-key.enc``); the child seals its checkpoints and its adapter with it, and the parent,
which holds the vault, unseals the adapter and stores it as ``NAME@N`` under the master key.

States in the registry: queued (created) -> running (with the child's PID) -> finished,
stopped or failed. The outcome of a session is read back from ``metrics.jsonl`` (the events
after this session's start), so any process holding the vault can settle a run whose parent
is gone: :func:`reconcile` (in :mod:`appliance.training.settle`) does it for every run marked
running whose process has ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.datasets.store import describe as describe_dataset
from appliance.datasets.store import resolve as resolve_dataset
from appliance.errors import (
    ApplianceError,
    NotFoundError,
    TrainingError,
    UsageError,
)
from appliance.models.use import resolve_model_for_use
from appliance.registry import Registry
from appliance.registry.refs import check_name
from appliance.training import events as ev
from appliance.training.config import TrainConfig, save_config
from appliance.training.runfolder import (
    LOG_FILE,
    RUN_KEY_FILE,
    RunSpec,
    read_session,
    write_session,
)
from appliance.training.settle import (
    LOST,
    Outcome,
    finalize,
    process_alive,
    reconcile,
    run_adapters,
    run_dir,
    session_events,
    try_reconcile,
)
from appliance.vault import Vault, new_object_id

STOP_TIMEOUT_S = 120.0
"""How long a stop waits for the child to checkpoint before killing it."""


# --- creating and launching --------------------------------------------------------------------


def create_run(
    vault: Vault,
    reg: Registry,
    *,
    model: str,
    dataset: str,
    adapter_name: str,
    config: TrainConfig,
) -> str:
    """Record a queued run and write its folder (config, run key, run description).

    Raises:
        NotFoundError: no such model or dataset version.
        UsageError: a bad adapter name or dataset reference.
    """
    check_name(adapter_name, "adapter name")
    ds = resolve_dataset(reg, dataset)
    reg.base_model(model)
    with vault.ws.writer("train"):
        run_id = reg.add_run(
            base_model=model,
            config=config.to_dict(),
            dataset=ds["name"],
            dataset_version=ds["version"],
            seed=config.seed,
        )
        folder = run_dir(vault, reg.run(run_id))
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        save_config(config, folder)
        vault.write(folder / RUN_KEY_FILE, new_object_id(), [os.urandom(32)])
        prepare_spec(vault, reg, run_id, adapter_name)
    return run_id


def prepare_spec(
    vault: Vault, reg: Registry, run_id: str, adapter_name: str | None = None
) -> RunSpec:
    """Resolve the model folder (re-checking its files) and the dataset; write ``run.json``."""
    run = reg.run(run_id)
    folder = run_dir(vault, run)
    if adapter_name is None:
        adapter_name = RunSpec.load(folder).adapter_name
    ds = reg.dataset_version(run["dataset"], run["dataset_version"])
    model_dir = resolve_model_for_use(vault.ws, reg, run["base_model"])
    spec = RunSpec(
        run_id=run_id,
        model=run["base_model"],
        model_dir=str(Path(model_dir).absolute()),
        dataset=ds["name"],
        dataset_version=ds["version"],
        dataset_path=str(vault.path(ds["path"]).absolute()),
        dataset_object_id=ds["object_id"],
        dataset_sha256=ds["sha256"],
        adapter_name=adapter_name,
    )
    spec.save(folder)
    return spec


def worker_command(folder: Path, threads: int | None = None) -> list[str]:
    """The child's command line: the same one a user could type."""
    command = [sys.executable, "-m", "appliance.training.worker", str(folder)]
    if threads:
        command += ["--threads", str(threads)]
    return command


def key_line(vault: Vault, reg: Registry, run_id: str) -> bytes:
    """The line written to the child's stdin: the dataset's data key and the run key."""
    run = reg.run(run_id)
    folder = run_dir(vault, run)
    ds = reg.dataset_version(run["dataset"], run["dataset_version"], include_deleted=True)
    if ds["deleted_at"] is not None:
        raise NotFoundError(
            f"{describe_dataset(ds)} was deleted, so run {run_id} cannot train on it any more"
        )
    data_key = vault.data_key(vault.path(ds["path"]), ds["object_id"], describe_dataset(ds))
    run_key = bytes(vault.read(folder / RUN_KEY_FILE, what=f"the key of run {run_id}"))
    return (json.dumps({"dataset_key": data_key.hex(), "run_key": run_key.hex()}) + "\n").encode()


@dataclass
class TrainingProcess:
    """A started child. Iterate :meth:`events`, then :meth:`wait`; :meth:`stop` asks it to end."""

    run_id: str
    folder: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, on_bad_line: Callable[[str], None] | None = None) -> Iterator[ev.Event]:
        """Typed events as the child emits them, until its stdout closes."""
        stdout = self.proc.stdout
        if stdout is None:
            return
        for number, raw in enumerate(stdout, start=1):
            if not raw.strip():
                continue
            try:
                yield ev.parse_event(raw, where=f"training output line {number}")
            except ev.EventError as exc:
                if on_bad_line is not None:
                    on_bad_line(str(exc))

    def stop(self) -> None:
        """Ask for a graceful stop (SIGTERM): the child checkpoints and emits ``stopped``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start one session of a run, in this process or through QProcess."""

    run_id: str
    folder: Path
    command: list[str]
    """The child's command line (:func:`worker_command`)."""
    keys: bytes = field(repr=False)
    """The line to write to the child's stdin, then close it (:func:`key_line`)."""
    log_file: Path
    """Where the child's stderr belongs (the run's ``train.log``, appended)."""


def prepare_launch(
    vault: Vault, reg: Registry, run_id: str, *, threads: int | None = None
) -> LaunchPlan:
    """Check that ``run_id`` can start, refresh its run description, and gather its keys.

    A run whose model or dataset is gone or changed is marked failed with the reason.
    The session's start in ``metrics.jsonl`` is recorded here, before any child can write.

    Raises:
        UsageError: the run is finished, or running already.
        NotFoundError / IntegrityError: its model or dataset is gone or changed.
    """
    run = reg.run(run_id)
    if run["state"] == "finished":
        raise UsageError(f"run {run_id} has finished; start a new run with 'appliance train'")
    if run["state"] == "running" and process_alive(run["pid"], run_id):
        raise UsageError(f"run {run_id} is running already (pid {run['pid']})")
    folder = run_dir(vault, run)
    try:
        prepare_spec(vault, reg, run_id)
        keys = key_line(vault, reg, run_id)
    except ApplianceError as exc:
        # The model or dataset is gone or changed: the run cannot start, and says why.
        with vault.ws.writer("train"):
            reg.update_run(run_id, state="failed", failure_reason=str(exc))
        raise
    metrics = folder / ev.METRICS_FILE
    offset = metrics.stat().st_size if metrics.exists() else 0
    write_session(folder, {"pid": None, "metrics_offset": offset, "launched": time.time()})
    return LaunchPlan(run_id, folder, worker_command(folder, threads), keys, folder / LOG_FILE)


def mark_started(vault: Vault, reg: Registry, plan: LaunchPlan, pid: int) -> None:
    """Record the started child's PID in ``session.json`` and mark the run running."""
    session = read_session(plan.folder)
    write_session(plan.folder, {**session, "pid": pid})
    with vault.ws.writer("train"):
        if reg.run(plan.run_id)["state"] != "running":
            reg.update_run(plan.run_id, state="running", pid=pid)
        else:
            reg.update_run(plan.run_id, pid=pid)


def launch(
    vault: Vault,
    reg: Registry,
    run_id: str,
    *,
    detach: bool = False,
    threads: int | None = None,
) -> TrainingProcess:
    """Start (or resume) ``run_id`` in a child process and mark it running with its PID.

    With ``detach`` the child's events go only to ``metrics.jsonl`` (its stdout is not piped),
    so it outlives this process; any later command settles its outcome via :func:`reconcile`.
    The GUI does the same with QProcess: :func:`prepare_launch`, start ``plan.command``, write
    ``plan.keys``, :func:`mark_started`; then :func:`finalize` when the child has exited.

    Raises:
        UsageError: the run is finished, or running already.
        NotFoundError / IntegrityError: its model or dataset is gone or changed.
    """
    plan = prepare_launch(vault, reg, run_id, threads=threads)
    with open(plan.log_file, "ab") as log_file:
        proc = subprocess.Popen(
            plan.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL if detach else subprocess.PIPE,
            stderr=log_file,
            # Its own session: Ctrl-C in the terminal reaches the parent only, which then asks
            # the child to stop gracefully; a closed terminal does not kill a detached run.
            start_new_session=True,
            close_fds=True,
        )
    assert proc.stdin is not None
    try:
        proc.stdin.write(plan.keys)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once; its exit code tells why
    mark_started(vault, reg, plan, proc.pid)
    return TrainingProcess(run_id, plan.folder, proc)


# --- outcomes ----------------------------------------------------------------------------------


def stop_run(
    vault: Vault, reg: Registry, run_id: str, *, timeout: float = STOP_TIMEOUT_S
) -> Outcome:
    """Stop a running run from any process: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Raises:
        UsageError: the run is not running.
    """
    run = reg.run(run_id)
    pid = run["pid"]
    if run["state"] != "running" or not process_alive(pid, run_id):
        if run["state"] == "running":
            return finalize(vault, reg, run_id)
        raise UsageError(f"run {run_id} is {run['state']}, not running; nothing to stop")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid, run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = process_alive(pid, run_id)
    if killed:
        os.kill(pid, signal.SIGKILL)
        while process_alive(pid, run_id):
            time.sleep(0.1)
    reason = None
    if killed:
        reason = (
            f"it did not stop within {timeout:.0f} s and was killed; resume it from its last "
            "checkpoint with 'appliance run resume'"
        )
    return finalize(vault, reg, run_id, reason=reason)


def wait_settled(process: TrainingProcess, vault: Vault, reg: Registry) -> Outcome:
    """After the events ended: reap the child and settle its run."""
    code = process.wait()
    return finalize(vault, reg, process.run_id, exit_code=code)


__all__ = [
    "LOST",
    "LaunchPlan",
    "Outcome",
    "TrainingError",
    "TrainingProcess",
    "create_run",
    "finalize",
    "key_line",
    "launch",
    "mark_started",
    "prepare_launch",
    "prepare_spec",
    "process_alive",
    "reconcile",
    "run_adapters",
    "run_dir",
    "session_events",
    "stop_run",
    "try_reconcile",
    "wait_settled",
    "worker_command",
]
