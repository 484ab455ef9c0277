"""The training child: ``python -m appliance.training.worker RUN_DIR [--threads N]``.

Started by :func:`appliance.training.runs.launch` (``appliance train``, ``run resume``, the GUI),
and runnable by hand:

1. :func:`appliance.offline.enforce` before anything else;
2. the config and run description from ``RUN_DIR/meta.json`` (:class:`RunFolder`);
3. the keys from stdin as one JSON line ``{"dataset_key": HEX, "run_key": HEX}``: the data key
   of the one dataset object it trains on, and the run key that seals its checkpoints and its
   adapter. Never the master key, never argv, environment or disk;
4. decrypt and tokenise in memory, train (:mod:`appliance.training.loop`), write events.

With a topology of several processes in ``meta.json`` (``--gpus``, ``--processes``, ``--nnodes``),
the same command becomes torchrun's agent (:mod:`appliance.training.agent`) and starts itself
once per local process; each of those ranks reads its own key line from the inherited stdin
(exactly :data:`KEY_LINE_BYTES` bytes), joins the process group, and trains its share. Only the
first rank of the machine writes events; only global rank 0 writes checkpoints and the adapter.
A rank that fails leaves its message for the agent, which emits the run's ``failed`` event.

Events go to the original stdout, one JSON line each, flushed, and to ``RUN_DIR/metrics.jsonl``;
file descriptor 1 is pointed at stderr first, so a library that prints cannot corrupt the
stream. Logs and warnings go to stderr and ``RUN_DIR/train.log``. SIGTERM (or Ctrl-C when run by
hand) finishes the current step, saves a checkpoint, emits ``stopped`` and exits 0. A failure
emits ``failed`` with a message for the user and exits 1; only an internal error (a bug) leaves
a traceback in the log. A parent that stops reading (killed, its terminal closed) does not stop
the run: the events go on to ``metrics.jsonl``. The child never loads the registry: it reads its
folder, decrypts with the keys it was given and packs its adapter (:func:`appliance.adapters.pack`)
for the parent to register.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

from appliance import offline
from appliance.errors import (
    ApplianceError,
    DatasetError,
    IntegrityError,
    NotFoundError,
    TrainingError,
    UsageError,
)
from appliance.fsutil import open_append
from appliance.training import events as ev
from appliance.training.placement import Topology
from appliance.training.runfolder import LOG_FILE, RunFolder, RunSpec

log = logging.getLogger("appliance.training")


class KeyHandoverError(TrainingError):
    """The keys on stdin are missing or malformed."""


class RunConfigError(TrainingError):
    """The run folder's description (``meta.json``) cannot be used."""


def format_keys(dataset_key: bytes, run_key: bytes) -> bytes:
    """The key line the launcher writes on stdin: always :data:`KEY_LINE_BYTES` long."""
    body = {"dataset_key": dataset_key.hex(), "run_key": run_key.hex()}
    return (json.dumps(body) + "\n").encode()


KEY_LINE_BYTES = len(format_keys(bytes(32), bytes(32)))
"""Length of one key line: each rank of a launch reads exactly this many bytes of the stdin
it shares with the others, and the parent writes all the lines in one atomic pipe write."""


def read_key_line(fd: int = 0) -> str:
    """Exactly one key line from ``fd`` (a rank's share of the stdin its agent inherited).

    Raises:
        KeyHandoverError: the input ended first.
    """
    data = b""
    while len(data) < KEY_LINE_BYTES:
        chunk = os.read(fd, KEY_LINE_BYTES - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


def read_keys(stream: IO[str]) -> dict[str, bytes]:
    """The keys the launcher wrote on stdin as one JSON line.

    Raises:
        KeyHandoverError: no line, not JSON, or a key that is not 32 bytes of hex.
    """
    line = stream.readline()
    if not line.strip():
        raise KeyHandoverError(
            "no keys arrived on stdin: the worker expects one JSON line with dataset_key and "
            "run_key; start runs with 'appliance train' or 'appliance run resume'"
        )
    try:
        data = json.loads(line)
        keys = {name: bytes.fromhex(data[name]) for name in ("dataset_key", "run_key")}
    except (ValueError, KeyError, TypeError):
        raise KeyHandoverError("the keys on stdin are not a JSON line of two hex keys") from None
    for name, key in keys.items():
        if len(key) != 32:
            raise KeyHandoverError(f"the {name} on stdin is not a 32-byte key")
    return keys


def decrypt_run_rows(spec: RunSpec, data_key: bytes) -> list[dict[str, Any]]:
    """Decrypt the dataset version in memory and check it is the one the registry recorded.

    Raises:
        NotFoundError: the dataset file is gone.
        DatasetError: it cannot be decrypted with the key given, or its content changed.
    """
    from appliance.datasets.canonical import decode
    from appliance.vault.objects import decrypt_with_data_key

    what = f"dataset {spec.dataset} version {spec.dataset_version}"
    try:
        data = decrypt_with_data_key(
            Path(spec.dataset_path), data_key, spec.dataset_object_id, what
        )
    except IntegrityError as exc:
        raise DatasetError(
            f"{what} cannot be decrypted with the key the launcher handed over ({exc}); "
            "if 'appliance verify' finds the file intact, the key was wrong: start the run "
            "again from 'appliance train' or 'appliance run resume'"
        ) from None
    if hashlib.sha256(data).hexdigest() != spec.dataset_sha256:
        raise DatasetError(f"{what} does not match its registry record (sha256)")
    return decode(data, what)


def choose_threads(requested: int | None, processes: int = 1) -> int:
    """Torch threads: one per core that is really free, leaving one for the parent and the OS,
    shared among the ``processes`` training processes of this machine.

    On the project's 2-core machines this is one thread, measured to be both faster and far
    steadier than two (docs/engineering-notes.md, "One torch thread on a 2-core machine").
    """
    if requested:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if processes > 1:
        return max(1, cores // processes)
    busy = round(os.getloadavg()[0])
    return max(1, min(cores - 1, cores - busy))


def _take_stdout(keep: bool = True) -> IO[str] | None:
    """The original stdout for events; fd 1 (and ``sys.stdout``) now lead to stderr.

    A rank that writes no events (``keep`` false) lets go of the stream altogether.
    """
    events_fd = os.dup(1) if keep else None
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if events_fd is None:
        return None
    return os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)


def _rank_environment() -> tuple[int, int, int] | None:
    """(global rank, local rank, local processes) when torchrun started this process as a rank."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or "LOCAL_RANK" not in os.environ:
        return None
    return (
        int(os.environ["RANK"]),
        int(os.environ["LOCAL_RANK"]),
        int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def _die_with_parent() -> None:
    """A rank ends when its agent does (torchrun starts ranks in their own session, so a kill
    of the agent would otherwise leave them training on their own)."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the agent died before the line above
        os._exit(1)


def _launch_topology(folder: RunFolder) -> Topology | None:
    try:
        return folder.topology()
    except TrainingError:
        return None


def _select_gpus(topology: Topology | None) -> None:
    """Before torch loads: a plain child trains on the one GPU its topology chose."""
    if topology is not None and topology.device == "cuda" and topology.gpu_indices:
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        os.environ.setdefault(
            "CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in topology.gpu_indices)
        )


def _setup_logging(run_dir: Path, rank: int | None = None) -> None:
    where = f" [rank {rank}]" if rank is not None else ""
    formatter = logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    logging.getLogger("appliance").setLevel(logging.INFO)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(formatter)
    root.addHandler(to_stderr)
    log_path = run_dir / LOG_FILE
    try:
        same = os.path.samefile(log_path, f"/proc/self/fd/{sys.stderr.fileno()}")
    except OSError:
        same = False
    if not same and run_dir.is_dir():
        # The launcher already sends stderr to train.log; by hand, write it there too.
        os.close(open_append(log_path))  # owner-only, like every file of the workspace
        to_file = logging.FileHandler(log_path, encoding="utf-8")
        to_file.setFormatter(formatter)
        root.addHandler(to_file)
    logging.captureWarnings(True)


def failure_event(exc: BaseException, run_id: str, trainer: Any, run_dir: Path) -> ev.Failed:
    """The ``failed`` event for an exception, with a message a user can act on."""
    step = trainer.state.step if trainer is not None else None
    at = f" at step {step + 1}" if step is not None else ""
    oom_type = _cuda_oom_type()
    if oom_type is not None and isinstance(exc, oom_type):
        return ev.Failed(run_id=run_id, step=step, kind="oom", message=_oom_message(trainer, at))
    if isinstance(exc, MemoryError):
        return ev.Failed(
            run_id=run_id,
            step=step,
            kind="oom",
            message=f"the computer ran out of memory{at}; lower micro_batch_size or "
            "max_seq_length, or use method qlora",
        )
    if isinstance(exc, UsageError | RunConfigError):
        return ev.Failed(run_id=run_id, step=step, kind="config", message=str(exc))
    if isinstance(exc, DatasetError | IntegrityError | NotFoundError):
        return ev.Failed(run_id=run_id, step=step, kind="data", message=str(exc))
    if isinstance(exc, ApplianceError):
        return ev.Failed(run_id=run_id, step=step, kind="error", message=str(exc))
    return ev.Failed(
        run_id=run_id,
        step=step,
        kind="error",
        message=f"internal error{at}: {type(exc).__name__}: {exc}; the details are in "
        f"{run_dir / LOG_FILE}",
    )


def _cuda_oom_type() -> type[BaseException] | None:
    torch = sys.modules.get("torch")
    return getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None


def _oom_message(trainer: Any, at: str) -> str:
    from appliance.gpu import format_bytes

    parts = [f"CUDA out of memory{at}"]
    estimate = getattr(trainer, "estimate", None)
    free = getattr(trainer, "free_at_start", None)
    if estimate:
        parts.append(f"the estimate was {format_bytes(estimate['total_bytes'])}")
    if free is not None:
        parts.append(f"{format_bytes(free)} was free at the start")
    hint = "lower micro_batch_size or max_seq_length, or turn gradient_checkpointing on"
    try:
        from appliance.training.estimate import suggest_changes

        if free is not None and trainer.model_config:
            found = suggest_changes(trainer.model_config, trainer.config, free)
            if found:
                hint = "try --set " + " --set ".join(found[0].assignments)
    except Exception:  # a hint is a courtesy; the failure itself must still be reported
        log.exception("no suggestion for the out-of-memory failure")
    return "; ".join(parts) + f"; {hint}"


def main(argv: list[str] | None = None) -> int:
    """Run one launch of the run in ``RUN_DIR``; 0 finished or stopped, 1 failed.

    Depending on the launch's topology and on torchrun's environment this process is the one
    trainer, torchrun's agent over several ranks (:mod:`appliance.training.agent`), or one rank.
    """
    offline.enforce()
    parser = argparse.ArgumentParser(prog="python -m appliance.training.worker")
    parser.add_argument("run_dir", type=Path, help="the run folder made by 'appliance train'")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir).absolute()
    ranked = _rank_environment()
    if ranked is not None:
        _die_with_parent()
    writes_events = ranked is None or ranked[1] == 0
    stream = _take_stdout(keep=writes_events)
    _setup_logging(run_dir, ranked[0] if ranked is not None else None)
    folder = RunFolder(run_dir)
    run_id = folder.run_id()
    topology = _launch_topology(folder) if run_dir.is_dir() else None
    _select_gpus(topology if ranked is None else None)
    trainer: Any = None
    stop_early = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop_early
        log.info("signal %d: stopping after the current step", signum)
        stop_early = True
        if trainer is not None:
            trainer.request_stop()

    metrics = run_dir / ev.METRICS_FILE if run_dir.is_dir() and writes_events else None
    events = ev.EventLog(metrics, stream)
    agent = ranked is None and topology is not None and topology.distributed
    if not agent:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    group: Any = None
    try:
        if not run_dir.is_dir():
            raise TrainingError(f"{run_dir} is not a run folder")
        try:
            spec = folder.spec()
            config = folder.config()
        except TrainingError as exc:
            raise RunConfigError(str(exc)) from None
        if topology is not None and topology.rendezvous:
            from appliance import netpolicy
            from appliance.workspace import Workspace

            # Re-checked here against the workspace's own list: meta.json alone opens nothing.
            netpolicy.admit(Workspace(run_dir.parent.parent), topology.rendezvous)
        if agent:
            assert topology is not None
            from appliance.training.agent import run_agent

            return run_agent(run_id, topology, events, stream)
        if ranked is not None:
            keys = read_keys(io.StringIO(read_key_line(0)))
        else:
            keys = read_keys(sys.stdin)
        rows = decrypt_run_rows(spec, keys["dataset_key"])

        import torch
        from transformers.utils import logging as hf_logging

        from appliance.training.distributed import from_environment
        from appliance.training.loop import Trainer
        from appliance.training.memory import GatheredMemory, MemorySampler

        threads = choose_threads(args.threads, ranked[2] if ranked is not None else 1)
        torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()  # bars are for terminals, not for train.log
        log.info("run %s: torch %s, %d CPU thread(s)", run_id, torch.__version__, threads)
        if ranked is not None:
            assert topology is not None
            group = from_environment(topology.timeout_s, topology.backend)
        trainer = Trainer(
            spec=spec,
            config=config,
            run_dir=run_dir,
            run_key=keys["run_key"],
            rows=rows,
            events=events,
            group=group,
            topology=topology,
        )
        del rows
        if stop_early:
            trainer.request_stop()
        trainer.setup()
        nvml = None
        if trainer.cuda:
            from appliance.gpu import NvmlReader

            nvml = NvmlReader()
            nvml.open()
        physical = _physical_gpu(topology, trainer)
        gathered = None
        if trainer.group.distributed:
            gathered = GatheredMemory(trainer.group, topology, nvml=nvml, physical=physical)
            trainer.step_hooks.append(gathered.gather)
        sampler = MemorySampler(
            events,
            run_id,
            nvml=nvml,
            devices=[trainer.device_index] if trainer.cuda else [],
            physical=[physical] if physical is not None else None,
            step=lambda: trainer.state.step,
            interval=1.0,
            compose=gathered.compose if gathered is not None else None,
        )
        if writes_events:
            with sampler:
                outcome = trainer.run()
            sampler.sample()
        else:
            outcome = trainer.run()
        if nvml is not None:
            nvml.close()
        log.info("run %s %s at step %d", run_id, outcome, trainer.state.step)
        return 0
    except BaseException as exc:
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            raise
        event = failure_event(exc, run_id, trainer, run_dir)
        if event.kind == "error" and not isinstance(exc, ApplianceError):
            log.exception("training failed")
        else:
            log.error("training failed: %s", event.message)
        if ranked is None:
            events.emit(event)
        else:
            # Under torchrun the agent speaks for the run: it quotes the rank that failed first.
            from appliance.training.agent import write_error_file
            from appliance.training.distributed import is_peer_failure

            peer = is_peer_failure(exc)
            message = (
                "lost its connection to another process of the run, which failed or was "
                "stopped first"
                if peer
                else event.message
            )
            write_error_file(message, event.kind, peer)
        return 1
    finally:
        events.close()
        if stream is not None:
            with contextlib.suppress(BrokenPipeError, ValueError):
                stream.flush()  # a parent that is gone reads nothing; metrics.jsonl has it all
        if group is not None:
            with contextlib.suppress(Exception):
                group.close()


def _physical_gpu(topology: Topology | None, trainer: Any) -> int | None:
    """NVML's index of this process's GPU (torch numbers only the visible ones)."""
    if not trainer.cuda:
        return None
    if topology is not None and topology.gpu_indices:
        return topology.gpu_indices[trainer.device_index]
    return trainer.device_index


if __name__ == "__main__":
    sys.exit(main())
