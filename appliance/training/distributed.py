"""The training child's place among several processes: torch.distributed, seen by the loop.

One :class:`Group` per training process. Alone (one process) every operation is the identity, so
the loop has one code path; under torchrun (``WORLD_SIZE`` > 1) it joins the process group that
torchrun's rendezvous set up and offers the few collective operations the loop needs, on a
CPU-side gloo group (small sums and gathers, never the gradients):

* sums of token counts and losses (the loss of a step is divided by the label tokens of the
  whole global batch, every process and accumulation step together);
* agreement on stopping, so every process ends at the same step;
* gathers of per-process memory readouts and random-generator states.

The gradients are exchanged by DDP itself (:mod:`appliance.training.parallel`), or FSDP's
reduce-scatter. Who writes what: global rank 0 writes checkpoints and the adapter; the first
process of each machine writes that machine's event stream (on one machine: rank 0 alone).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

log = logging.getLogger("appliance.training")

T = TypeVar("T")

PEER_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "gloo",
    "nccl",
    "timed out",
    "timeout",
    "socket",
    "store",
)
"""Words in a collective's error that mean another process went away (the run's failure lies
there, not here)."""


@dataclass
class Group:
    """This process's rank in the run (world 1 when alone) and the loop's collective operations."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    nnodes: int = 1
    backend: str | None = None
    """``gloo`` or ``nccl`` when distributed; None alone."""
    _cpu: Any = field(default=None, repr=False)
    """A gloo process group for the small CPU-side collectives (the default group on CPU)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes_checkpoints(self) -> bool:
        """Only global rank 0 writes checkpoints and the adapter."""
        return self.rank == 0

    @property
    def writes_events(self) -> bool:
        """The first process of each machine writes that machine's event stream."""
        return self.local_rank == 0

    # -- collectives (identities when alone) ---------------------------------------------------

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over every process, in float64 (exact for token counts < 2**53)."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(tensor, group=self._cpu)
        return [float(v) for v in tensor.tolist()]

    def any(self, flag: bool) -> bool:
        """Whether any process has ``flag`` set (to stop at the same step everywhere)."""
        if not self.distributed:
            return flag
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def gather(self, values: Sequence[int]) -> list[list[int]]:
        """Every process's ``values`` (int64, the same length everywhere), by global rank."""
        if not self.distributed:
            return [list(values)]
        import torch.distributed as dist

        mine = torch.tensor(list(values), dtype=torch.int64)
        found = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(found, mine, group=self._cpu)
        return [[int(v) for v in t.tolist()] for t in found]

    def gather_bytes(self, data: torch.Tensor) -> list[torch.Tensor]:
        """Every process's uint8 tensor (any length), by global rank (RNG states, say)."""
        if not self.distributed:
            return [data]
        import torch.distributed as dist

        flat = data.detach().to("cpu", torch.uint8).flatten()
        sizes = self.gather([flat.numel()])
        longest = max(s[0] for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: flat.numel()] = flat
        found = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(found, padded, group=self._cpu)
        return [t[: s[0]].clone() for t, s in zip(found, sizes, strict=True)]

    def same_everywhere(self, digest: bytes, what: str) -> None:
        """Check that every process computed the same ``digest`` of ``what`` (config, data).

        Raises:
            TrainingError: naming the first process that differs.
        """
        if not self.distributed:
            return
        from appliance.errors import TrainingError

        mine = [int.from_bytes(digest[i : i + 7], "big") for i in range(0, 28, 7)]
        for rank, theirs in enumerate(self.gather(mine)):
            if theirs != mine:
                raise TrainingError(
                    f"process {rank} trains on a different {what} than process {self.rank}: "
                    "every machine of a run needs the same base model, dataset version and "
                    "settings (docs/cluster.md)"
                )

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._cpu)

    # -- sharing out examples ------------------------------------------------------------------

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of one global micro-batch, in order: contiguous and as even as
        possible (sizes differ by one at most), so the processes together hold every item once."""
        return share_of(items, self.rank, self.world_size)

    def close(self) -> None:
        """Leave the process group (at the end of a launch that joined one)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def share_of(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Process ``rank``'s contiguous share of ``items`` among ``world_size`` (see
    :meth:`Group.share`)."""
    n = len(items)
    return list(items[rank * n // world_size : (rank + 1) * n // world_size])


def from_environment(timeout_s: int, backend: str) -> Group:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``...), or stay alone.

    Args:
        timeout_s: how long a collective waits for the others before it fails.
        backend: ``gloo`` or ``nccl``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return Group()
    import torch.distributed as dist

    group = Group(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        node_rank=int(os.environ.get("GROUP_RANK", "0")),
        nnodes=max(1, world // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))),
        backend=backend,
    )
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        torch.cuda.set_device(group.local_rank)
        dist.init_process_group(
            "nccl", timeout=timeout, device_id=torch.device("cuda", group.local_rank)
        )
        group._cpu = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
        group._cpu = None  # the default group is already gloo on the CPU
    log.info(
        "rank %d of %d (local %d, node %d), backend %s, collective timeout %d s",
        group.rank,
        group.world_size,
        group.local_rank,
        group.node_rank,
        backend,
        timeout_s,
    )
    return group


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says another process went away (a collective failed), not this one."""
    import torch.distributed as dist

    kinds = tuple(
        k for k in (getattr(dist, "DistError", None), getattr(dist, "DistBackendError", None)) if k
    )
    if kinds and isinstance(exc, kinds):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in PEER_MARKERS)
