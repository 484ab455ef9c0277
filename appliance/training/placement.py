"""Where a launch of a run trains: the devices of this machine, and the machines that share it.

A :class:`Placement` is what a person asks for (``appliance train --gpus 0,2``, ``--processes 2``,
``--nnodes 2 --node-rank 1 --rendezvous HOST:PORT``; the Train page's device picker binds to the
same fields). :func:`resolve_topology` checks it against this machine's GPUs (NVML) and the training
config and gives a :class:`Topology`: how many processes on this node, on which devices, with
which torch.distributed backend. Everything here is checked before anything is created, and a
refusal says which option to change. No torch: the parent and the desktop app use it.

The run is data-parallel (DDP) by default: every process holds the whole base model and a
``micro_batch_size`` slice of each global micro-batch, so one optimizer step sees
``micro_batch_size x gradient_accumulation_steps x world size`` sequences (:func:`global_batch`).
``--set parallel=fsdp`` shards the 4-bit base across GPUs instead (GPU only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from appliance.errors import UsageError
from appliance.gpu import GpuState
from appliance.netpolicy import parse_rendezvous

DEFAULT_TIMEOUT_S = 600
"""How long a collective waits for the other processes before the run fails (a hung peer).

A dead process is noticed at once (its connections close and torchrun's agent sees it exit);
this bounds only a peer that hangs. It must cover the slowest difference between processes
outside the steps: loading the model, a checkpoint written by rank 0."""


def _usage(message: str) -> UsageError:
    return UsageError(message)


@dataclass(frozen=True)
class Placement:
    """Where one launch of a run trains (the launch options, not part of the run's config)."""

    gpus: str = "all"
    """NVIDIA GPUs to train on: ``all`` (every GPU NVML sees, or the CPU when there is none), a
    comma list of NVML indices such as ``0,2``, or ``none`` for the CPU."""
    processes: int | None = None
    """Data-parallel processes on the CPU with the gloo backend (CPU-only servers, tests).
    None: one process on the CPU, or one per selected GPU."""
    nnodes: int = 1
    """Machines taking part (torchrun's ``--nnodes``); each one runs the same command."""
    node_rank: int = 0
    """This machine's rank among them, 0 to nnodes - 1. Node 0 owns the run: its events,
    checkpoints and adapter."""
    rendezvous: str | None = None
    """``HOST:PORT`` where node 0 hosts torchrun's c10d rendezvous; needed when nnodes > 1.
    A non-loopback address must be on the workspace's network allow-list."""
    timeout_s: int = DEFAULT_TIMEOUT_S
    """Seconds a collective operation waits for the other processes before the run fails."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Placement:
        """Read a placement back (unknown keys ignored; missing ones take their defaults).

        Raises:
            UsageError: a value of the wrong type.
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise _usage("the run's placement is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise _usage(f"the run's placement is not valid ({exc})") from None


@dataclass(frozen=True)
class Topology:
    """A checked placement: the processes of this node and the run's world."""

    nproc_per_node: int
    """Training processes on this machine."""
    nnodes: int
    node_rank: int
    device: str
    """``cuda`` or ``cpu``."""
    backend: str
    """torch.distributed backend: ``nccl`` on GPUs, ``gloo`` on the CPU."""
    gpu_indices: tuple[int, ...] = ()
    """NVML indices of this machine's GPUs, one per local process (empty on the CPU)."""
    device_names: tuple[str, ...] = ()
    """One name per local process: the GPU's name, or ``cpu``."""
    rendezvous: str | None = None
    """``HOST:PORT`` of the rendezvous for several machines; None on one machine."""
    timeout_s: int = DEFAULT_TIMEOUT_S
    parallel: str = "ddp"
    """``ddp`` (each process holds the whole base) or ``fsdp`` (the base sharded)."""
    torchrun: bool = False
    """Run under torchrun even with one process (``bench/gpu_check.py`` proves the path so)."""

    @property
    def world_size(self) -> int:
        """Processes in the whole run (every node runs as many as this one)."""
        return self.nproc_per_node * self.nnodes

    @property
    def distributed(self) -> bool:
        """Whether the launch runs under torchrun: more than one process in all, or FSDP (which
        wraps the model even on one GPU), or asked for."""
        return self.world_size > 1 or self.nnodes > 1 or self.parallel == "fsdp" or self.torchrun

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the world size (the launch section and lineage keep it)."""
        return {**dataclasses.asdict(self), "world_size": self.world_size}

    @classmethod
    def from_dict(cls, data: Any) -> Topology:
        """Read :meth:`to_dict` output back.

        Raises:
            UsageError: not a topology.
        """
        if not isinstance(data, dict):
            raise _usage("the run's topology is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("gpu_indices", "device_names"):
            values[name] = tuple(values.get(name) or ())
        try:
            return cls(**values)
        except TypeError as exc:
            raise _usage(f"the run's topology is not valid ({exc})") from None

    def describe(self) -> str:
        """One line for people: ``2 processes on the CPU (gloo)``, ``GPUs 0, 2 (nccl)``..."""
        if self.device == "cuda":
            gpus = ", ".join(str(i) for i in self.gpu_indices)
            where = f"GPU{'s' if len(self.gpu_indices) > 1 else ''} {gpus}"
            names = sorted(set(self.device_names))
            where += f" ({', '.join(names)})" if names else ""
        else:
            count = self.nproc_per_node
            where = f"{count} process{'es' if count > 1 else ''} on the CPU"
        text = f"{where}, {self.backend}" if self.distributed else where
        if self.nnodes > 1:
            text += (
                f"; node {self.node_rank} of {self.nnodes}, {self.world_size} processes in all, "
                f"rendezvous {self.rendezvous}"
            )
        if self.parallel == "fsdp":
            text += "; FSDP (the base sharded across GPUs)"
        return text


def global_batch(micro_batch_size: int, accumulation: int, world_size: int) -> int:
    """Sequences per optimizer step: micro-batch x accumulation x processes."""
    return micro_batch_size * accumulation * world_size


def describe_global_batch(micro_batch_size: int, accumulation: int, world_size: int) -> str:
    """``Global batch: 8 sequences a step = micro-batch 2 x accumulation 2 x 2 processes``."""
    total = global_batch(micro_batch_size, accumulation, world_size)
    procs = f"{world_size} process{'es' if world_size > 1 else ''}"
    return (
        f"Global batch: {total} sequences a step = micro-batch {micro_batch_size} x "
        f"accumulation {accumulation} x {procs}"
    )


# --- checking a request --------------------------------------------------------------------------


def parse_gpus(text: str) -> str | list[int]:
    """``all``, ``none`` or a sorted list of distinct GPU indices.

    Raises:
        UsageError: anything else, with the accepted forms.
    """
    value = text.strip().lower()
    if value in ("all", "none"):
        return value
    parts = [p.strip() for p in value.split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise _usage(
            f"--gpus {text!r}: give all, none, or GPU indices separated by commas (e.g. 0,2); "
            "'appliance gpu' lists the GPUs"
        )
    indices = [int(p) for p in parts]
    if len(set(indices)) != len(indices):
        raise _usage(f"--gpus {text!r} names a GPU twice; list each GPU once")
    return sorted(indices)


def preferred_gpus(allowed: tuple[int, ...] | None, gpus: GpuState, *, where: str) -> str:
    """The ``--gpus`` value for the GPUs a workspace allows training to use (its settings).

    What ``appliance train`` and ``appliance run resume`` use when no ``--gpus`` is given, so the
    Settings page's choice holds for the CLI as for the Train page.

    Args:
        allowed: the ``training_gpus`` setting: None every GPU, empty the CPU, else indices.
        gpus: an NVML reading of this machine.
        where: the settings file, named in a refusal.

    Raises:
        UsageError: an allowed GPU that NVML does not see (or no GPU at all).
    """
    if allowed is None:
        return "all"
    if not allowed:
        return "none"
    listed = ", ".join(str(i) for i in allowed)
    fix = "tick the GPUs of this machine on the Settings page, or choose with --gpus"
    if not gpus.available:
        raise _usage(
            f"the workspace allows training on GPU {listed} only ({where}), but there is no "
            f"NVIDIA GPU on this machine ({gpus.unavailable_reason or 'NVML found none'}); "
            f"{fix} (--gpus none for the CPU)"
        )
    present = {g.index for g in gpus.gpus}
    missing = [i for i in allowed if i not in present]
    if missing:
        have = ", ".join(str(i) for i in sorted(present))
        raise _usage(
            f"the workspace allows training on GPU {listed} ({where}), but this machine has no "
            f"GPU {missing[0]} (NVML sees GPU {have}); {fix}"
        )
    return ",".join(str(i) for i in sorted(allowed))


def resolve_topology(placement: Placement, gpus: GpuState, *, parallel: str = "ddp") -> Topology:
    """Check ``placement`` against this machine's GPUs and the run's parallel mode.

    Args:
        placement: what was asked for.
        gpus: an NVML reading of this machine (:func:`appliance.gpu.read_gpus`).
        parallel: the config's ``parallel`` setting (``ddp`` or ``fsdp``).

    Raises:
        UsageError: a GPU that is not here, --processes below 1 or beside --gpus, FSDP on the
            CPU, or inconsistent multi-machine options; nothing has been created.
    """
    if placement.processes is not None and placement.processes < 1:
        raise _usage(
            f"--processes {placement.processes}: run at least 1 process (2 or more for "
            "data-parallel training on the CPU)"
        )
    if placement.timeout_s < 10:
        raise _usage(f"the collective timeout is {placement.timeout_s} s; give 10 s or more")
    _check_nodes(placement)
    wanted = parse_gpus(placement.gpus)
    if placement.processes is not None:
        if isinstance(wanted, list):
            raise _usage(
                f"--processes {placement.processes} runs processes on the CPU and cannot be "
                f"combined with --gpus {placement.gpus}; use one or the other"
            )
        device_gpus: list[tuple[int, str]] = []
        nproc = placement.processes
    elif wanted == "none" or (wanted == "all" and not gpus.available):
        device_gpus, nproc = [], 1
    elif wanted == "all":
        device_gpus = [(g.index, g.name) for g in gpus.gpus]
        nproc = len(device_gpus)
    else:
        assert isinstance(wanted, list)
        if not gpus.available:
            raise _usage(
                f"--gpus {placement.gpus}: there is no NVIDIA GPU on this machine "
                f"({gpus.unavailable_reason or 'NVML found none'}); train on the CPU with "
                "--gpus none, or --processes N for N CPU processes"
            )
        present = {g.index: g.name for g in gpus.gpus}
        missing = [i for i in wanted if i not in present]
        if missing:
            have = ", ".join(str(i) for i in sorted(present))
            raise _usage(
                f"--gpus {placement.gpus}: this machine has no GPU {missing[0]} (NVML sees "
                f"GPU {have}); choose among them, or --gpus all"
            )
        device_gpus = [(i, present[i]) for i in wanted]
        nproc = len(device_gpus)
    cuda = bool(device_gpus)
    if parallel == "fsdp" and not cuda:
        raise _usage(
            "parallel=fsdp shards the base model across NVIDIA GPUs (NCCL) and does not run on "
            "the CPU; use parallel=ddp (the default) for CPU processes, or select GPUs with --gpus"
        )
    return Topology(
        nproc_per_node=nproc,
        nnodes=placement.nnodes,
        node_rank=placement.node_rank,
        device="cuda" if cuda else "cpu",
        backend="nccl" if cuda else "gloo",
        gpu_indices=tuple(i for i, _ in device_gpus),
        device_names=tuple(name for _, name in device_gpus) or ("cpu",) * nproc,
        rendezvous=placement.rendezvous if placement.nnodes > 1 else None,
        timeout_s=placement.timeout_s,
        parallel=parallel,
    )


def _check_nodes(placement: Placement) -> None:
    if placement.nnodes < 1:
        raise _usage(f"--nnodes {placement.nnodes}: give 1 or more machines")
    if not 0 <= placement.node_rank < placement.nnodes:
        raise _usage(
            f"--node-rank {placement.node_rank}: give 0 to {placement.nnodes - 1} for "
            f"--nnodes {placement.nnodes} (node 0 hosts the rendezvous and owns the run)"
        )
    if placement.nnodes > 1 and not placement.rendezvous:
        raise _usage(
            f"--nnodes {placement.nnodes} needs --rendezvous HOST:PORT: the address of node 0, "
            "where the machines meet"
        )
    if placement.nnodes == 1 and (placement.rendezvous or placement.node_rank):
        raise _usage(
            "--rendezvous and --node-rank are for runs on several machines; add --nnodes N "
            "(2 or more), or leave them out"
        )
    if placement.rendezvous:
        parse_rendezvous(placement.rendezvous)


def check_batch_division(train_examples: int, micro_batch_size: int, world_size: int) -> None:
    """Refuse a split in which some process would get no example of a micro-batch.

    Each global micro-batch (``micro_batch_size x world_size`` examples, in the order a single
    process would see them) is shared out among the processes. The last one of an epoch holds
    what is left over; every process needs at least one example of it.

    Raises:
        UsageError: naming the numbers and what to change.
    """
    if world_size <= 1:
        return
    size = micro_batch_size * world_size
    better = _suggest(train_examples, world_size)
    left = train_examples % size
    if train_examples < world_size or 0 < left < world_size:
        short = train_examples if train_examples < world_size else left
        raise _usage(
            f"the {train_examples} training examples do not divide across {world_size} "
            f"processes with micro_batch_size {micro_batch_size}: a global micro-batch of "
            f"{size} leaves {short} example(s) at the end of each epoch, too few for every "
            f"process to get one; choose a micro_batch_size or number of processes that "
            f"leaves no remainder (e.g. --set micro_batch_size={better})"
        )


def _suggest(train_examples: int, world_size: int) -> int:
    """The largest micro-batch up to 8 whose global micro-batch divides the examples evenly."""
    for size in range(8, 0, -1):
        left = train_examples % (size * world_size)
        if left == 0 or left >= world_size:
            return size
    return 1
