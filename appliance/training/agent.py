"""Several training processes under one parent: torchrun's agent inside the worker command.

When a launch's topology (``meta.json``) has more than one process, ``python -m
appliance.training.worker RUN_DIR`` does not train itself: it becomes torchrun's elastic agent
(``torch.distributed.launcher``, the engine behind ``torchrun``) and starts the same command once
per local process, each with torchrun's ``RANK``/``WORLD_SIZE``/... environment. To its parent
it is still one process with one PID, one stdin and one stdout:

* **stdin**: the ranks inherit it; the parent wrote one key line per local rank and each rank
  reads exactly one (a single atomic pipe write, fixed-length lines), so the keys never pass
  through argv, the environment or a file;
* **stdout**: the ranks inherit it; the first rank of the machine writes the events, the others
  point their stdout at stderr;
* **faults**: with no restarts, one rank that dies (killed, out of memory, an error) makes the
  agent stop the others at once; the agent then emits the ``failed`` event naming the rank that
  failed first (:func:`root_cause`). Each rank that fails on its own writes its message to the
  error file torchrun gives it, so the agent can quote it;
* **stop**: SIGTERM to the agent reaches every rank; they agree on a step, rank 0 checkpoints
  and emits ``stopped``;
* **network**: one machine uses loopback only. Over several machines the rendezvous is the
  address the allow-list admitted; the agent never looks its own host name up (torch's agent
  would, through ``socket.getfqdn``), and node 0 hosts the rendezvous store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from appliance.netpolicy import parse_rendezvous
from appliance.training import events as ev
from appliance.training.placement import Topology

log = logging.getLogger("appliance.training")

SHUTDOWN_GRACE_S = 100
"""How long the agent lets the ranks finish a step and checkpoint after SIGTERM (a stop) before
it kills them; below :data:`appliance.training.runs.STOP_TIMEOUT_S`."""
RENDEZVOUS_ID = "appliance"
"""torchrun's run id on several machines (each machine's run has its own appliance id)."""
MONITOR_INTERVAL_S = 0.2
"""How often the agent looks at its ranks: a dead rank is noticed within this."""


@dataclass(frozen=True)
class RankFailure:
    """How one rank ended, as the agent saw it."""

    rank: int
    pid: int
    exitcode: int
    """Negative: killed by that signal."""
    message: str | None = None
    """The rank's own message (from its error file), if it wrote one."""
    kind: str = "error"
    peer: bool = False
    """The rank failed because another process went away (a consequence, not the cause)."""
    time: float = 0.0


def write_error_file(message: str, kind: str, peer: bool) -> None:
    """In a rank: leave ``message`` where the agent reads it (torchrun's per-rank error file)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    now = time.time()
    body = {
        "message": {
            "message": message,
            "extraInfo": {
                "timestamp": str(int(now)),
                "py_callstack": "",
                "kind": kind,
                "peer": peer,
                "time": now,
            },
        }
    }
    with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as handle:
        json.dump(body, handle)


def root_cause(failures: list[RankFailure]) -> RankFailure:
    """The failure that ended the run: a rank killed by a signal other than the agent's SIGTERM,
    or one that failed on its own, before the ranks that lost their peers or were stopped."""

    def rank(f: RankFailure) -> tuple[int, float, int]:
        if f.exitcode < 0 and -f.exitcode != signal.SIGTERM:
            order = 0
        elif f.exitcode > 0 and not f.peer:
            order = 0 if f.message else 1
        elif f.peer:
            order = 2
        else:
            order = 3
        return order, f.time, f.rank

    return min(failures, key=rank)


def describe_rank_failure(failure: RankFailure, world_size: int) -> str:
    """The run's failure reason in words, naming the rank."""
    who = f"rank {failure.rank} of {world_size} (pid {failure.pid})"
    if failure.exitcode < 0:
        try:
            name = signal.Signals(-failure.exitcode).name
        except ValueError:
            name = f"signal {-failure.exitcode}"
        hint = "; the system may have run out of memory" if name == "SIGKILL" else ""
        text = f"{who} was killed by {name}{hint}"
    elif failure.message:
        text = f"{who}: {failure.message}"
    else:
        text = f"{who} exited with code {failure.exitcode} without a report"
    return (
        f"{text}; the other processes were stopped. Resume from the last checkpoint with "
        "'appliance run resume' (on any number of processes)"
    )


def _failures(error: Any) -> list[RankFailure]:
    found = []
    for rank, failure in error.failures.items():
        data = getattr(failure, "error_file_data", None) or {}
        message = data.get("message") if isinstance(data, dict) else None
        extra: dict[str, Any] = {}
        text = None
        if isinstance(message, dict):
            text = message.get("message")
            extra = message.get("extraInfo") or {}
        found.append(
            RankFailure(
                rank=int(rank),
                pid=int(failure.pid),
                exitcode=int(failure.exitcode),
                message=text if isinstance(text, str) else None,
                kind=str(extra.get("kind", "error")),
                peer=bool(extra.get("peer", False)),
                time=float(extra.get("time", getattr(failure, "timestamp", 0)) or 0),
            )
        )
    return found


@contextlib.contextmanager
def _no_own_name_lookups(name: str) -> Iterator[None]:
    """torch's agent asks for this host's fully qualified name (a DNS query the offline guard
    refuses, and one the appliance has no reason to make): answer with ``name`` instead."""
    real = socket.getfqdn

    def own_name(_name: str = "") -> str:
        return name

    socket.getfqdn = own_name  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getfqdn = real


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(topology: Topology) -> None:
    """Variables the ranks inherit: which GPUs, and which network interface on one machine."""
    if topology.device == "cuda":
        # NVML and CUDA number GPUs the same way only in PCI bus order.
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in topology.gpu_indices)
    from appliance.offline import is_loopback_host

    host = parse_rendezvous(topology.rendezvous)[0] if topology.rendezvous else "127.0.0.1"
    if is_loopback_host(host):
        # Everything stays on loopback (gloo and NCCL's bootstrap would pick an interface).
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")


@contextlib.contextmanager
def _ranks_inherit(stream: IO[str] | None) -> Iterator[None]:
    """While the ranks start, file descriptor 1 is the event stream again (the worker had
    pointed it at stderr), so that the rank that writes events writes them to the parent."""
    if stream is None:
        yield
        return
    saved = os.dup(1)
    os.dup2(stream.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def run_agent(run_id: str, topology: Topology, events: ev.EventLog, stream: IO[str] | None) -> int:
    """Start the local ranks under torchrun's agent and wait for them; 0 finished or stopped.

    ``events`` writes the agent's own ``failed`` event (the ranks write everything else);
    ``stream`` is the parent's pipe, which the ranks inherit as their stdout.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _environment(topology)
    if topology.nnodes > 1:
        assert topology.rendezvous is not None
        host, _port = parse_rendezvous(topology.rendezvous)
        endpoint = topology.rendezvous
        # Node 0 hosts the store and is the address the others reach; the others need no name.
        local_addr = host if topology.node_rank == 0 else socket.gethostname()
    else:
        endpoint, local_addr = f"127.0.0.1:{_free_port()}", "127.0.0.1"
    logs = tempfile.mkdtemp(prefix="appliance-ranks-")  # torchrun's per-rank error files
    fields = {f.name for f in dataclasses.fields(LaunchConfig)}
    options: dict[str, Any] = {
        "min_nodes": topology.nnodes,
        "max_nodes": topology.nnodes,
        "nproc_per_node": topology.nproc_per_node,
        # The machines' runs have ids of their own; the rendezvous is the one they share.
        "run_id": RENDEZVOUS_ID if topology.nnodes > 1 else run_id,
        "rdzv_backend": "c10d",
        "rdzv_endpoint": endpoint,
        "rdzv_configs": {
            "is_host": topology.node_rank == 0,
            "join_timeout": topology.timeout_s,
            "read_timeout": topology.timeout_s,
        },
        "max_restarts": 0,
        "monitor_interval": MONITOR_INTERVAL_S,
        "local_addr": local_addr,
        "logs_specs": DefaultLogsSpecs(log_dir=logs),
    }
    if "shutdown_timeout" in fields:
        options["shutdown_timeout"] = SHUTDOWN_GRACE_S
    config = LaunchConfig(**{k: v for k, v in options.items() if k in fields})
    # The ranks run this very command; torchrun's environment makes each one a rank.
    command = list(sys.orig_argv[1:])
    log.info(
        "run %s: %d process(es) on this machine, %d in all (%s); rendezvous %s",
        run_id,
        topology.nproc_per_node,
        topology.world_size,
        topology.backend,
        endpoint,
    )
    try:
        with _no_own_name_lookups(local_addr), _ranks_inherit(stream):
            elastic_launch(config, sys.executable)(*command)
        return 0
    except ChildFailedError as error:
        failures = _failures(error)
        cause = root_cause(failures)
        for failure in sorted(failures, key=lambda f: f.rank):
            log.error(
                "rank %d (pid %d) ended with %d: %s",
                failure.rank,
                failure.pid,
                failure.exitcode,
                failure.message or "no message",
            )
        events.emit(
            ev.Failed(
                run_id=run_id,
                message=describe_rank_failure(cause, topology.world_size),
                kind=cause.kind if cause.exitcode > 0 else "error",
                rank=cause.rank,
            )
        )
        return 1
    except RendezvousError as exc:
        events.emit(
            ev.Failed(
                run_id=run_id,
                kind="config",
                message=f"the machines of the run did not meet at the rendezvous {endpoint} "
                f"within {topology.timeout_s} s ({type(exc).__name__}: {exc}); start the same "
                f"command on each of the {topology.nnodes} machines, with --node-rank 0 to "
                f"{topology.nnodes - 1}, and check that node 0 is reachable at that address",
            )
        )
        return 1
    except SignalException as exc:
        # A stop (SIGTERM): the ranks were asked to checkpoint and stop; rank 0 said so.
        log.info("agent stopped by %s; the ranks were asked to stop", exc.sigval.name)
        return 0
    finally:
        shutil.rmtree(logs, ignore_errors=True)
