"""A training run from the parent's side: the one door to create, launch, stop and settle runs.

``appliance train`` / ``appliance run ...`` and the desktop app call these functions and nothing
else to change a run; the run itself is described once on disk, in its folder's ``meta.json``
(:mod:`appliance.training.runfolder`), and indexed by the registry's ``runs`` table::

    check_new_run   validate a request (model, dataset, adapter name) before anything is made
    create_run      registry row (queued) + run folder: meta.json, run-key.enc
    prepare_launch  check it can start, refresh meta.json's launch section, gather its keys
                    -> LaunchPlan (command, key line, log file), for this process or QProcess
    mark_started    record the child's PID: the run is running
    launch          prepare_launch + start the child + hand over the keys + mark_started
    stop_run        from any process: SIGTERM, SIGKILL after a timeout, then finalize
    finalize        settle an ended launch: finished (adapter registered), stopped or failed
    reconcile       finalize every run marked running whose process is gone

Processes: a launch runs as one plain child, or, when its :class:`Topology` has several
processes (``--gpus``, ``--processes``, ``--nnodes``), as torchrun's agent (the same command:
``python -m appliance.training.worker RUN_DIR``, which reads the topology from ``meta.json``)
that starts one rank per device. The parent sees one process, one PID and one event stream
either way; the key line goes once per local rank down the same stdin pipe (each rank reads
exactly one line), so every rank gets the keys without argv, environment or disk.

Keys: the child gets the data key of its one dataset object and the run key, never the master
key. The run key is random per run and kept in the run folder sealed by the master key
(``run-key.enc``); the child seals its checkpoints and its adapter with it, and the parent,
which holds the vault, unseals the adapter and stores it as ``NAME@N`` under the master key.

States in the registry: queued (created) -> running (with the child's PID) -> finished,
stopped or failed. A launch's outcome is read back from ``metrics.jsonl`` (the events after the
launch's start recorded in the launch section), so any process holding the vault settles a run
whose parent is gone: the parent that followed the child, a later ``appliance run list``, or the
desktop app at start-up. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance import adapters
from appliance.datasets.store import resolve as resolve_dataset
from appliance.datasets.store import version_label
from appliance.errors import (
    ApplianceError,
    NotFoundError,
    RegistryError,
    TrainingError,
    UsageError,
    WorkspaceLockedError,
)
from appliance.fsutil import open_append
from appliance.models.use import resolve_model_for_use
from appliance.registry import Registry
from appliance.registry.refs import check_name
from appliance.registry.rows import BaseModelRow, DatasetVersionRow, RunRow
from appliance.training import events as ev
from appliance.training.config import ConfigError, TrainConfig
from appliance.training.placement import Placement, Topology, check_batch_division, resolve_topology
from appliance.training.process import (
    TrainingProcess,
    describe_exit,
    process_alive,
    worker_command,
)
from appliance.training.runfolder import Launch, RunFolder
from appliance.vault import Vault, new_object_id
from appliance.vault.objects import read_object

STOP_TIMEOUT_S = 120.0
"""How long a stop waits for the child to checkpoint before killing it."""
TERMINAL = (ev.Finished, ev.Stopped, ev.Failed)


def run_folder(vault: Vault, run: RunRow) -> RunFolder:
    """The folder of ``run`` (a registry row)."""
    return RunFolder(vault.ws.home / str(run["path"]))


# --- creating ----------------------------------------------------------------------------------


def check_new_run(
    reg: Registry,
    *,
    model: str,
    dataset: str,
    adapter_name: str,
    config: TrainConfig | None = None,
) -> DatasetVersionRow:
    """Check a request for a new run before anything is made or shown; returns the dataset row.

    Raises:
        UsageError: a bad adapter name or dataset reference.
        ConfigError: ``config`` does not suit the model (sequences longer than its context).
        NotFoundError: no such model or dataset version.
    """
    check_name(adapter_name, "adapter name")
    row = reg.models.get(model)
    found = resolve_dataset(reg, dataset)
    if config is not None:
        check_for_model(row, config)
    return found


def _dataset_of(reg: Registry, run: RunRow, *, include_deleted: bool = False) -> DatasetVersionRow:
    """The dataset version ``run`` trains on.

    Raises:
        RegistryError: the run names none (a row not made by :func:`create_run`).
    """
    if run["dataset"] is None:
        raise RegistryError(f"run {run['id']} has no dataset in the registry; it cannot train")
    return reg.datasets.version(
        run["dataset"], run["dataset_version"], include_deleted=include_deleted
    )


def _base_model_of(run: RunRow) -> str:
    if run["base_model"] is None:
        raise RegistryError(f"run {run['id']} has no base model in the registry; it cannot train")
    return run["base_model"]


def check_for_model(model: BaseModelRow, config: TrainConfig) -> None:
    """Refuse settings the model cannot take: sequences longer than its context window.

    Raises:
        ConfigError: naming the setting and the longest value the model takes.
    """
    context = model.get("context_length")
    length = config.data.max_seq_length
    if context and length > int(context):
        raise ConfigError(
            f"invalid training config: data.max_seq_length is {length}, longer than the "
            f"{int(context):,}-token context of model {model['name']}; set it to {context} or less"
        )


def create_run(
    vault: Vault,
    reg: Registry,
    *,
    model: str,
    dataset: str,
    adapter_name: str,
    config: TrainConfig,
) -> str:
    """Record a queued run and make its folder (``meta.json``, ``run-key.enc``).

    Raises:
        NotFoundError: no such model or dataset version.
        UsageError: a bad adapter name or dataset reference.
    """
    ds = check_new_run(reg, model=model, dataset=dataset, adapter_name=adapter_name, config=config)
    with vault.ws.writer("train"):
        run_id = reg.runs.add(
            base_model=model,
            config=config.to_dict(),
            dataset=ds["name"],
            dataset_version=ds["version"],
            seed=config.seed,
        )
        folder = run_folder(vault, reg.runs.get(run_id))
        folder.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        vault.write(folder.run_key, new_object_id(), [os.urandom(32)])
        _write_launch(vault, reg, run_id, adapter_name=adapter_name)
    return run_id


def _write_launch(
    vault: Vault,
    reg: Registry,
    run_id: str,
    *,
    adapter_name: str | None = None,
    metrics_offset: int = 0,
    launched: float | None = None,
    topology: Topology | None = None,
) -> RunFolder:
    """Resolve the model folder (re-checking its files) and the dataset; write the launch section.

    Call with the workspace's writer lock held.
    """
    run = reg.runs.get(run_id)
    folder = run_folder(vault, run)
    if adapter_name is None:
        adapter_name = folder.launch().adapter_name
    ds = _dataset_of(reg, run)
    model_dir = resolve_model_for_use(vault.ws, reg, _base_model_of(run))
    folder.write_launch(
        Launch(
            adapter_name=adapter_name,
            model_dir=str(Path(model_dir).absolute()),
            dataset_path=str(vault.path(ds["path"]).absolute()),
            dataset_object_id=ds["object_id"],
            metrics_offset=metrics_offset,
            launched=launched,
            topology=topology.to_dict() if topology is not None else None,
        )
    )
    return folder


# --- launching ---------------------------------------------------------------------------------


def key_line(vault: Vault, reg: Registry, run_id: str) -> bytes:
    """The line written to the child's stdin: the dataset's data key and the run key."""
    run = reg.runs.get(run_id)
    folder = run_folder(vault, run)
    ds = _dataset_of(reg, run, include_deleted=True)
    if ds["deleted_at"] is not None:
        raise NotFoundError(
            f"{version_label(ds)} was deleted, so run {run_id} cannot train on it any more"
        )
    data_key = vault.data_key(vault.path(ds["path"]), ds["object_id"], version_label(ds))
    run_key = bytes(vault.read(folder.run_key, what=f"the key of run {run_id}"))
    return (json.dumps({"dataset_key": data_key.hex(), "run_key": run_key.hex()}) + "\n").encode()


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start one launch of a run, in this process or through QProcess."""

    run_id: str
    folder: Path
    command: list[str]
    """The child's command line (:func:`~appliance.training.process.worker_command`)."""
    keys: bytes = field(repr=False)
    """What to write to the child's stdin, then close it: the :func:`key_line` once per process
    of this machine (each rank reads one)."""
    log_file: Path
    """Where the child's stderr belongs (the run's ``train.log``, appended; it exists, 0600)."""
    topology: Topology | None = None
    """The launch's processes and devices (None: one plain process)."""


def plan_topology(
    config: TrainConfig,
    placement: Placement | None = None,
    *,
    train_examples: int | None = None,
) -> Topology:
    """Check ``placement`` for a run of ``config`` on this machine (NVML), before anything is made.

    Args:
        train_examples: the dataset version's training rows, to check that every process gets
            examples of each micro-batch (skipped when None).

    Raises:
        UsageError: a device that is not here, a bad option, or a split that leaves a process
            without examples.
    """
    from appliance.gpu import read_gpus

    topology = resolve_topology(placement or Placement(), read_gpus(), parallel=config.parallel)
    if train_examples is not None:
        check_batch_division(train_examples, config.schedule.micro_batch_size, topology.world_size)
    return topology


def check_network(vault: Vault, topology: Topology) -> str | None:
    """Refuse a rendezvous off this machine that the workspace's allow-list does not hold.

    Returns:
        The allow-list entry the run uses, or None (one machine, or a loopback rendezvous).

    Raises:
        NetworkPolicyError: an address off this machine not on the list; nothing is started.
    """
    from appliance import netpolicy

    if topology.rendezvous is None:
        return None
    return netpolicy.check_rendezvous(vault.ws, topology.rendezvous)


def prepare_launch(
    vault: Vault,
    reg: Registry,
    run_id: str,
    *,
    threads: int | None = None,
    placement: Placement | None = None,
    topology: Topology | None = None,
) -> LaunchPlan:
    """Check that ``run_id`` can start, refresh its launch section, and gather its keys.

    A run whose model or dataset is gone or changed is marked failed with the reason. The
    launch's start in ``metrics.jsonl`` is recorded here, before any child can write.

    Args:
        placement: where this launch trains (``--gpus``, ``--processes``, ``--nnodes``...);
            checked here. By default every GPU of this machine, or one CPU process.
        topology: an already checked placement (:func:`plan_topology`), instead of
            ``placement``.

    Raises:
        UsageError: the run is finished or running already, or the placement is refused (the
            run is left as it was).
        NetworkPolicyError: a rendezvous off this machine not on the allow-list.
        NotFoundError / IntegrityError: its model or dataset is gone or changed.
    """
    run = reg.runs.get(run_id)
    if run["state"] == "finished":
        raise UsageError(f"run {run_id} has finished; start a new run with 'appliance train'")
    if run["state"] == "running" and process_alive(run["pid"], run_id):
        raise UsageError(f"run {run_id} is running already (pid {run['pid']})")
    folder = run_folder(vault, run)
    if topology is None:
        try:
            config: TrainConfig | None = TrainConfig.from_dict(run["config"])
        except ConfigError:
            config = None  # the child reports a config it cannot use, as a failed run
        # A run with checkpoints keeps the global micro-batch of its first launch (the child
        # checks the split against it); a fresh one is checked against the dataset's rows here.
        fresh = not any(folder.checkpoints.glob("step-*"))
        ds = _dataset_of(reg, run, include_deleted=True)
        rows = ds.get("train_rows") if fresh and config is not None else None
        topology = plan_topology(config or TrainConfig(), placement, train_examples=rows)
    entry = check_network(vault, topology)
    with vault.ws.writer("train: launch"):
        try:
            folder.prepare_stream_files()
            offset = folder.metrics.stat().st_size
            _write_launch(
                vault,
                reg,
                run_id,
                metrics_offset=offset,
                launched=time.time(),
                topology=topology,
            )
            keys = key_line(vault, reg, run_id) * topology.nproc_per_node
        except ApplianceError as exc:
            # The model or dataset is gone or changed: the run cannot start, and says why.
            reg.runs.update(run_id, state="failed", failure_reason=str(exc))
            raise
        if entry is not None:
            reg.audit(
                "network.use",
                entry,
                {"run": run_id, "node_rank": topology.node_rank, "nnodes": topology.nnodes},
            )
    return LaunchPlan(
        run_id,
        folder.path,
        worker_command(folder.path, threads),
        keys,
        folder.log,
        topology,
    )


def mark_started(vault: Vault, reg: Registry, plan: LaunchPlan, pid: int) -> None:
    """Record the started child's PID (registry and ``meta.json``): the run is running."""
    with vault.ws.writer("train"):
        if reg.runs.get(plan.run_id)["state"] != "running":
            reg.runs.update(plan.run_id, state="running", pid=pid)
        else:
            reg.runs.update(plan.run_id, pid=pid)


def launch(
    vault: Vault,
    reg: Registry,
    run_id: str,
    *,
    detach: bool = False,
    threads: int | None = None,
    placement: Placement | None = None,
    topology: Topology | None = None,
) -> TrainingProcess:
    """Start (or resume) ``run_id`` in a child process and mark it running with its PID.

    With ``detach`` the child's events go only to ``metrics.jsonl`` (its stdout is not piped),
    so it outlives this process; any later command settles its outcome via :func:`reconcile`.
    The desktop app does the same with QProcess: :func:`prepare_launch`, start
    ``plan.command``, write ``plan.keys``, :func:`mark_started`; then :func:`finalize` when the
    child has exited.

    Raises:
        UsageError: the run is finished or running already, or the placement is refused.
        NotFoundError / IntegrityError: its model or dataset is gone or changed.
    """
    plan = prepare_launch(
        vault, reg, run_id, threads=threads, placement=placement, topology=topology
    )
    log_fd = open_append(plan.log_file)
    try:
        proc = subprocess.Popen(
            plan.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL if detach else subprocess.PIPE,
            stderr=log_fd,
            # Its own session: Ctrl-C in the terminal reaches the parent only, which then asks
            # the child to stop gracefully; a closed terminal does not kill a detached run.
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    assert proc.stdin is not None
    try:
        proc.stdin.write(plan.keys)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once; its exit code tells why
    mark_started(vault, reg, plan, proc.pid)
    return TrainingProcess(run_id, plan.folder, proc)


# --- ending ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a launch ended, as settled in the registry."""

    run_id: str
    state: str
    message: str | None = None
    adapter: str | None = None
    """NAME@N of the registered adapter when finished."""
    finished: ev.Finished | None = None


def stop_run(
    vault: Vault, reg: Registry, run_id: str, *, timeout: float = STOP_TIMEOUT_S
) -> Outcome:
    """Stop a running run from any process: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Raises:
        UsageError: the run is not running.
    """
    run = reg.runs.get(run_id)
    pid = run["pid"]
    if run["state"] != "running" or pid is None or not process_alive(pid, run_id):
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


def finalize(
    vault: Vault,
    reg: Registry,
    run_id: str,
    exit_code: int | None = None,
    reason: str | None = None,
) -> Outcome:
    """Settle a launch that has ended: register the adapter, or record stopped / failed.

    ``exit_code`` (negative: killed by that signal) or ``reason`` explain a child that ended
    without a final event; without either the run failed with "process lost".

    Safe to call twice and from two processes (a foreground CLI and a ``run list``): under the
    writer lock, a run that is no longer marked running is left as it is.
    """
    with vault.ws.writer("train: finish run"):
        run = reg.runs.get(run_id)
        if run["state"] not in ("running", "queued"):
            return _settled(reg, run)
        folder = run_folder(vault, run)
        found = [e for e in folder.launch_events() if isinstance(e, TERMINAL)]
        last = found[-1] if found else None
        if isinstance(last, ev.Finished) and folder.adapter.exists():
            return _register(vault, reg, run, folder, last)
        if isinstance(last, ev.Finished) and _member_node(folder):
            # A machine other than node 0 of a run on several machines: its processes finished
            # their share; node 0 holds the checkpoints and registers the adapter.
            reg.runs.update(run_id, state="finished")
            message = "this machine's share is done; the adapter is registered on node 0"
            folder.note(f"run {run_id}: {message}")
            return Outcome(run_id, "finished", message, None, last)
        if isinstance(last, ev.Stopped):
            reg.runs.update(run_id, state="stopped")
            return Outcome(run_id, "stopped", f"stopped at step {last.step}")
        if isinstance(last, ev.Failed):
            reg.runs.update(run_id, state="failed", failure_reason=last.message)
            return Outcome(run_id, "failed", last.message)
        reason = reason or describe_exit(exit_code)
        reg.runs.update(run_id, state="failed", failure_reason=reason)
        folder.note(f"run {run_id} failed: {reason}")
        return Outcome(run_id, "failed", reason)


def _register(
    vault: Vault, reg: Registry, run: RunRow, folder: RunFolder, done: ev.Finished
) -> Outcome:
    adapter_name = folder.launch().adapter_name
    run_key = bytes(vault.read(folder.run_key, what=f"the key of run {run['id']}"))
    label = f"the adapter of run {run['id']}"
    # Stored as packed bytes, checked by header: settling needs no torch (the GUI settles too).
    blob = bytes(read_object(folder.adapter, run_key, what=label))
    adapters.check_packed(blob, label)
    metrics = {
        "train_loss": done.train_loss,
        "eval_loss": done.eval_loss,
        "tokens_seen": done.tokens_seen,
        "steps": done.step,
        "wall_s": done.total_wall_s if done.total_wall_s is not None else done.wall_s,
        "peak_memory": done.peak_memory,
        "placement": _placements(folder),
    }
    version = adapters.store(
        vault,
        reg,
        adapter_name,
        blob,
        run_id=run["id"],
        metrics=metrics,
        lib_versions=_lib_versions(),
    )
    reg.runs.update(run["id"], state="finished")
    folder.adapter.unlink(missing_ok=True)
    ref = f"{adapter_name}@{version}"
    return Outcome(run["id"], "finished", None, ref, done)


def _member_node(folder: RunFolder) -> bool:
    try:
        topology = folder.topology()
    except TrainingError:
        return False
    return topology is not None and topology.node_rank > 0


def _placements(folder: RunFolder) -> list[dict[str, Any]]:
    """Where each launch of the run trained, from its ``started`` events (for the lineage)."""
    try:
        events = list(ev.replay(folder.metrics))
    except (OSError, ev.EventError):
        return []
    return [
        {
            "start_step": e.start_step,
            "world_size": e.world_size or 1,
            "nnodes": e.nnodes or 1,
            "backend": e.backend,
            "parallel": e.parallel,
            "devices": e.devices or [e.device],
            "global_batch": e.global_batch,
        }
        for e in events
        if isinstance(e, ev.Started)
    ]


def _lib_versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "safetensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _settled(reg: Registry, run: RunRow) -> Outcome:
    refs = run_adapters(reg, run["id"])
    return Outcome(run["id"], run["state"], run["failure_reason"], refs[-1] if refs else None)


def run_adapters(reg: Registry, run_id: str) -> list[str]:
    """NAME@N of the adapter versions a run produced."""
    return [a["ref"] for a in reg.adapters.versions() if a["run_id"] == run_id]


def unsettled(reg: Registry) -> list[RunRow]:
    """Runs marked running whose process is gone: what :func:`reconcile` would settle."""
    return [r for r in reg.runs.all("running") if not process_alive(r["pid"], r["id"])]


def reconcile(vault: Vault, reg: Registry) -> list[Outcome]:
    """Settle every run marked running whose process is gone (finished, stopped or failed).

    A run whose child ended without a final event becomes ``failed`` with the reason
    "process lost": a run never hangs in "running".
    """
    return [finalize(vault, reg, run["id"]) for run in unsettled(reg)]


def try_reconcile(vault: Vault, reg: Registry) -> list[Outcome]:
    """:func:`reconcile`, skipped when another command holds the workspace for long."""
    try:
        return reconcile(vault, reg)
    except WorkspaceLockedError:
        return []


__all__ = [
    "STOP_TIMEOUT_S",
    "LaunchPlan",
    "Outcome",
    "check_for_model",
    "check_network",
    "check_new_run",
    "create_run",
    "finalize",
    "key_line",
    "launch",
    "mark_started",
    "plan_topology",
    "prepare_launch",
    "reconcile",
    "run_adapters",
    "run_folder",
    "stop_run",
    "try_reconcile",
    "unsettled",
    "wait_settled",
]
