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
is gone: :func:`reconcile` does it for every run marked running whose process has ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance import adapters
from appliance.datasets.store import describe as describe_dataset
from appliance.datasets.store import resolve as resolve_dataset
from appliance.errors import (
    ApplianceError,
    NotFoundError,
    TrainingError,
    UsageError,
    WorkspaceLockedError,
)
from appliance.models.use import resolve_model_for_use
from appliance.registry import Registry
from appliance.registry.refs import check_name
from appliance.training import events as ev
from appliance.training.config import TrainConfig, save_config
from appliance.training.runfolder import (
    ADAPTER_FILE,
    LOG_FILE,
    RUN_KEY_FILE,
    RunSpec,
    read_session,
    write_session,
)
from appliance.vault import Vault, new_object_id
from appliance.vault.objects import read_object

STOP_TIMEOUT_S = 120.0
"""How long a stop waits for the child to checkpoint before killing it."""
LOST = "process lost"
TERMINAL = (ev.Finished, ev.Stopped, ev.Failed)


def run_dir(vault: Vault, run: dict[str, Any]) -> Path:
    return vault.ws.home / str(run["path"])


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
    with open(folder / LOG_FILE, "ab") as log_file:
        proc = subprocess.Popen(
            worker_command(folder, threads),
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
        proc.stdin.write(keys)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once; its exit code tells why
    write_session(folder, {"pid": proc.pid, "metrics_offset": offset, "launched": time.time()})
    with vault.ws.writer("train"):
        if reg.run(run_id)["state"] != "running":
            reg.update_run(run_id, state="running", pid=proc.pid)
        else:
            reg.update_run(run_id, pid=proc.pid)
    return TrainingProcess(run_id, folder, proc)


# --- outcomes ----------------------------------------------------------------------------------


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


def finalize(vault: Vault, reg: Registry, run_id: str, exit_code: int | None = None) -> Outcome:
    """Settle a session that has ended: register the adapter, or record stopped / failed.

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
        reason = describe_exit(exit_code)
        reg.update_run(run_id, state="failed", failure_reason=reason)
        return Outcome(run_id, "failed", reason)


def _register(
    vault: Vault, reg: Registry, run: dict[str, Any], folder: Path, done: ev.Finished
) -> Outcome:
    spec = RunSpec.load(folder)
    run_key = bytes(vault.read(folder / RUN_KEY_FILE, what=f"the key of run {run['id']}"))
    label = f"the adapter of run {run['id']}"
    weights = adapters.unpack(read_object(folder / ADAPTER_FILE, run_key, what=label), label)
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
        weights,
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


# --- processes ---------------------------------------------------------------------------------


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
    outcome = finalize(vault, reg, run_id, exit_code=-signal.SIGKILL if killed else None)
    if killed and outcome.state == "failed":
        outcome.message = (
            f"it did not stop within {timeout:.0f} s and was killed; resume it from its last "
            "checkpoint with 'appliance run resume'"
        )
    return outcome


def try_reconcile(vault: Vault, reg: Registry) -> list[Outcome]:
    """:func:`reconcile`, skipped when another command holds the workspace for long."""
    try:
        return reconcile(vault, reg)
    except WorkspaceLockedError:
        return []


def wait_settled(process: TrainingProcess, vault: Vault, reg: Registry) -> Outcome:
    """After the events ended: reap the child and settle its run."""
    code = process.wait()
    return finalize(vault, reg, process.run_id, exit_code=code)


__all__ = [
    "LOST",
    "Outcome",
    "TrainingError",
    "TrainingProcess",
    "create_run",
    "finalize",
    "key_line",
    "launch",
    "prepare_spec",
    "process_alive",
    "reconcile",
    "run_adapters",
    "session_events",
    "stop_run",
    "try_reconcile",
    "wait_settled",
    "worker_command",
]
