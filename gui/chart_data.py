"""The Train page's chart series as numpy columns, kept beside a :class:`RunProgress`.

Charts redraw from arrays: appending one point must not copy the whole history (a long run has
hundreds of thousands of steps), so each series is a set of growable columns with amortised
O(1) appends, and a chart takes views of the filled part. :meth:`ChartData.from_progress` builds
them for a whole replayed run (on a worker thread: no Qt here), :meth:`ChartData.add` extends
them by the event just applied to the progress.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from appliance.training import events as ev
from appliance.training.progress import GpuPoint, HostPoint, RunProgress

STEP_COLUMNS = ("step", "epoch", "loss", "smoothed", "lr", "tokens_per_s")
EVAL_COLUMNS = ("step", "epoch", "eval_loss")
GPU_COLUMNS = ("time", "used", "total", "allocated", "reserved", "peak")
HOST_COLUMNS = ("time", "rss", "ram_total")


class Columns:
    """Float columns of equal length that grow by appending rows (None is stored as NaN)."""

    def __init__(self, names: tuple[str, ...], capacity: int = 256) -> None:
        self.names = names
        self._index = {name: i for i, name in enumerate(names)}
        self._data = np.full((len(names), max(1, capacity)), np.nan)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, name: str) -> np.ndarray:
        """The filled part of column ``name`` (a view: valid until the next append)."""
        return self._data[self._index[name], : self._size]

    def append(self, *values: float | int | None) -> None:
        if self._size == self._data.shape[1]:
            grown = np.full((len(self.names), self._data.shape[1] * 2), np.nan)
            grown[:, : self._size] = self._data
            self._data = grown
        self._data[:, self._size] = [math.nan if v is None else float(v) for v in values]
        self._size += 1

    def clear(self) -> None:
        self._size = 0


@dataclass
class ChartData:
    """Every series the Train page draws for one run."""

    steps: Columns = field(default_factory=lambda: Columns(STEP_COLUMNS))
    evals: Columns = field(default_factory=lambda: Columns(EVAL_COLUMNS))
    gpus: dict[int, Columns] = field(default_factory=dict)
    host: Columns = field(default_factory=lambda: Columns(HOST_COLUMNS))
    gpu_labels: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_progress(cls, progress: RunProgress) -> ChartData:
        """Every point of ``progress`` (a replayed run), as columns."""
        data = cls(
            steps=Columns(STEP_COLUMNS, len(progress.steps)),
            evals=Columns(EVAL_COLUMNS, len(progress.evals)),
            host=Columns(HOST_COLUMNS, len(progress.host)),
        )
        for s in progress.steps:
            data.steps.append(s.step, s.epoch, s.loss, s.smoothed_loss, s.lr, s.tokens_per_s)
        for e in progress.evals:
            data.evals.append(e.step, e.epoch, e.eval_loss)
        for index, points in sorted(progress.gpus.items()):
            data.gpus[index] = Columns(GPU_COLUMNS, len(points))
            data.gpu_labels[index] = progress.gpu_label(index)
            for point in points:
                data._add_gpu(index, point)
        for host in progress.host:
            if host.rss is not None:
                data._add_host(host)
        return data

    def add(self, event: ev.Event, progress: RunProgress) -> set[str]:
        """Extend the series by ``event``, already applied to ``progress``; what changed.

        Returns names of the changed series: ``steps``, ``evals``, ``gpu:N``, ``host``, or
        ``all`` when a new launch replaced points (a resume after a kill) and every chart must
        be drawn anew from :meth:`from_progress`.
        """
        if isinstance(event, ev.Started):
            if len(progress.steps) != len(self.steps) or len(progress.evals) != len(self.evals):
                return {"all"}
            return set()
        if isinstance(event, ev.Step) and progress.steps:
            s = progress.steps[-1]
            self.steps.append(s.step, s.epoch, s.loss, s.smoothed_loss, s.lr, s.tokens_per_s)
            return {"steps"}
        if isinstance(event, ev.Eval) and progress.evals:
            e = progress.evals[-1]
            self.evals.append(e.step, e.epoch, e.eval_loss)
            return {"evals"}
        if isinstance(event, ev.Memory):
            changed = set()
            for gpu in event.gpus:
                if gpu.index not in self.gpus:
                    self.gpus[gpu.index] = Columns(GPU_COLUMNS)
                self.gpu_labels[gpu.index] = progress.gpu_label(gpu.index)
                self._add_gpu(gpu.index, progress.gpus[gpu.index][-1])
                changed.add(f"gpu:{gpu.index}")
            if event.rss is not None and progress.host:
                self._add_host(progress.host[-1])
                changed.add("host")
            return changed
        return set()

    def _add_gpu(self, index: int, p: GpuPoint) -> None:
        self.gpus[index].append(p.time, p.used, p.total, p.allocated, p.reserved, p.peak)

    def _add_host(self, p: HostPoint) -> None:
        self.host.append(p.time, p.rss, p.ram_total)
