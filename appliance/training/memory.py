"""Memory readouts for the training process: NVML per GPU, torch's allocator, process RSS.

Used by the training child (and ``bench/gpu_check.py``) to fill :class:`~events.Memory` events.
torch is imported only if it is already loaded or the readout asks for CUDA, so this module can be
imported anywhere; on the CPU build of torch the CUDA calls are never made.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.gpu import NvmlReader
from appliance.training.events import EventLog, GpuMemory, Memory

if TYPE_CHECKING:
    from appliance.training.distributed import Group
    from appliance.training.placement import Topology


def process_rss() -> int | None:
    """Resident memory of this process in bytes (None where it cannot be read)."""
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except Exception:  # psutil missing or refused: fall back to /proc on Linux
        try:
            with open("/proc/self/statm", encoding="ascii") as handle:
                pages = int(handle.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None


def total_ram() -> int | None:
    """Physical memory of the machine in bytes (None where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def process_peak_rss() -> int | None:
    """Peak resident memory of this process in bytes (``VmHWM``; None where unreadable).

    Not ``getrusage().ru_maxrss``: Linux carries that across fork and exec, so a training child
    would report its parent's peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _torch_cuda() -> Any:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() else None
    except Exception:
        return None


def read_memory(
    run_id: str,
    *,
    nvml: NvmlReader | None = None,
    devices: list[int] | None = None,
    step: int | None = None,
    physical: list[int] | None = None,
) -> Memory:
    """A :class:`Memory` event for now.

    Args:
        run_id: the run.
        nvml: an open :class:`~appliance.gpu.NvmlReader` (without one: torch-only numbers).
        devices: CUDA device indices the run uses; None means every visible device.
        step: the current optimizer step, if known.
        physical: NVML's index of each of ``devices`` where they differ (a process that sees
            only some GPUs numbers them from 0; NVML numbers every GPU of the machine).
    """
    cuda = _torch_cuda()
    state = nvml.read() if nvml is not None else None
    readings = {g.index: g for g in state.gpus} if state is not None else {}
    if cuda is not None:
        indices = devices if devices is not None else list(range(cuda.device_count()))
    else:
        indices = devices if devices is not None else sorted(readings)
    gpus = []
    for position, index in enumerate(indices):
        # NVML numbers devices physically; with CUDA_VISIBLE_DEVICES set they may differ from
        # torch's. The run's launcher pins one order (CUDA_DEVICE_ORDER=PCI_BUS_ID) for both.
        nvml_index = physical[position] if physical is not None else index
        reading = readings.get(nvml_index)
        allocated = reserved = peak = None
        if cuda is not None:
            allocated = int(cuda.memory_allocated(index))
            reserved = int(cuda.memory_reserved(index))
            peak = int(cuda.max_memory_allocated(index))
        gpus.append(
            GpuMemory(
                index=nvml_index,
                name=reading.name if reading is not None else "",
                used=reading.memory_used if reading is not None else None,
                total=reading.memory_total if reading is not None else None,
                allocated=allocated,
                reserved=reserved,
                peak=peak,
            )
        )
    return Memory(run_id=run_id, step=step, gpus=gpus, rss=process_rss(), ram_total=total_ram())


class MemorySampler:
    """Emits a :class:`Memory` event every ``interval`` seconds from a background thread.

    The training loop's steps can take longer than a second; memory readouts are promised at
    least once a second while training on a GPU (README, "GPU use"), so they come from their own
    thread. NVML and torch's allocator counters are safe to read while the main thread trains.
    """

    def __init__(
        self,
        log: EventLog,
        run_id: str,
        *,
        nvml: NvmlReader | None = None,
        devices: list[int] | None = None,
        step: Callable[[], int | None] = lambda: None,
        interval: float = 1.0,
        physical: list[int] | None = None,
        compose: Callable[[Memory], Memory] | None = None,
    ) -> None:
        self._log = log
        self._run_id = run_id
        self._nvml = nvml
        self._devices = devices
        self._physical = physical
        self._compose = compose
        """Turns this process's reading into the run's (every process's, when there are several)."""
        self._step = step
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0
        """Events emitted so far."""

    def sample(self) -> Memory:
        """Read and emit one event now (also used for a final reading)."""
        event = read_memory(
            self._run_id,
            nvml=self._nvml,
            devices=self._devices,
            step=self._step(),
            physical=self._physical,
        )
        if self._compose is not None:
            event = self._compose(event)
        self._log.emit(event)
        self.samples += 1
        return event

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def start(self) -> MemorySampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and wait for it (at most one sampling)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_FIELDS = ("node", "index", "used", "total", "allocated", "reserved", "peak", "rss")


class GatheredMemory:
    """Every process's memory, gathered once a step, for the events of a run of several.

    Each step every process reads its own device (and RSS) and the readings are gathered over
    the process group (:meth:`gather`, a collective: every process calls it at the same point).
    The sampler thread of the process that writes events then merges its own fresh reading
    with the others' latest (:meth:`compose`), so each ``memory`` event has one GPU entry per
    process (one line per GPU in the chart) and every process's RSS.
    """

    def __init__(
        self,
        group: Group,
        topology: Topology | None,
        *,
        nvml: NvmlReader | None = None,
        physical: int | None = None,
    ) -> None:
        self._group = group
        self._topology = topology
        self._nvml = nvml
        self._physical = physical
        self._lock = threading.Lock()
        self._rows: list[list[int]] = []

    def _local(self) -> list[int]:
        cuda = _torch_cuda()
        devices = [cuda.current_device()] if cuda is not None else []
        physical = [self._physical] if self._physical is not None else None
        event = read_memory("", nvml=self._nvml, devices=devices, physical=physical)
        gpu = event.gpus[0] if event.gpus else None

        def number(value: int | None) -> int:
            return -1 if value is None else int(value)

        return [
            self._group.node_rank,
            gpu.index if gpu is not None else -1,
            number(gpu.used if gpu else None),
            number(gpu.total if gpu else None),
            number(gpu.allocated if gpu else None),
            number(gpu.reserved if gpu else None),
            number(gpu.peak if gpu else None),
            number(event.rss),
        ]

    def gather(self, _step: int | None = None) -> None:
        """Read this process and gather everyone's reading (collective)."""
        rows = self._group.gather(self._local())
        with self._lock:
            self._rows = rows

    def compose(self, local: Memory) -> Memory:
        """``local`` widened to every process: one GPU entry per rank, every rank's RSS."""
        with self._lock:
            rows = [list(r) for r in self._rows]
        if not rows:
            return local
        mine = self._group.rank
        names = self._topology.device_names if self._topology is not None else ()
        gpus = []
        for rank, row in enumerate(rows):
            values = dict(zip(_FIELDS, row, strict=True))
            if values["index"] < 0:
                continue
            if rank == mine and local.gpus:
                fresh = local.gpus[0]
                gpus.append(dataclasses.replace(fresh, rank=rank, node=values["node"]))
                continue
            local_index = rank % max(1, len(names)) if names else 0

            def value(key: str, values: dict[str, int] = values) -> int | None:
                return None if values[key] < 0 else values[key]

            gpus.append(
                GpuMemory(
                    index=values["index"],
                    name=names[local_index] if names else "",
                    used=value("used"),
                    total=value("total"),
                    allocated=value("allocated"),
                    reserved=value("reserved"),
                    peak=value("peak"),
                    rank=rank,
                    node=values["node"],
                )
            )
        rss = [r[-1] for r in rows]
        if local.rss is not None and 0 <= mine < len(rss):
            rss[mine] = local.rss
        return dataclasses.replace(local, gpus=gpus, rank_rss=rss)
