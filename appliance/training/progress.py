"""A run as people watch it: :class:`RunProgress`, built event by event, rendered by every view.

Feed it each event of a run, live (the child's stdout through
:func:`appliance.training.events.reader`) or from the run's ``metrics.jsonl``
(:meth:`RunProgress.replay`), and read back what a view shows: the state, the step, the loss
(raw and smoothed), the eval loss, the learning rate, throughput, elapsed time and ETA, memory per
GPU (NVML used/total and the trainer's torch allocated/reserved/peak) or, on a CPU, the
process's RSS against total RAM, the last checkpoint, the final metrics, the failure.

``appliance train`` prints :meth:`RunProgress.status_line` as its progress line and
:func:`event_line` for the events worth a line of their own; ``appliance run show`` replays the
same model, and the desktop app's Train page draws its charts from the same series. No Qt, no
torch, no clock: every figure derives from the events' own times, so a replay shows what the
live view showed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.training import events as ev
from appliance.units import format_bytes

STARTING, RUNNING, FINISHED, STOPPED, FAILED, LOST = (
    "starting",
    "running",
    "finished",
    "stopped",
    "failed",
    "lost",
)
STATES = (STARTING, RUNNING, FINISHED, STOPPED, FAILED, LOST)
SMOOTHING = 0.9
"""Weight of the past in the smoothed loss (an exponential moving average, bias-corrected)."""
HOST_LABEL = "CPU: training process RSS of total RAM"


@dataclass(frozen=True)
class StepPoint:
    """One optimizer step."""

    step: int
    epoch: float
    loss: float
    """NaN when the run diverged."""
    smoothed_loss: float
    """Bias-corrected EMA of the finite losses so far (weight :data:`SMOOTHING`)."""
    lr: float
    tokens_per_s: float
    tokens_seen: int | None
    time: float


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation on the held-out split (step 0: the base model, before training)."""

    step: int
    epoch: float
    eval_loss: float
    time: float


@dataclass(frozen=True)
class GpuPoint:
    """One GPU's memory at one moment, in bytes (None: not read)."""

    time: float
    step: int | None
    used: int | None
    """Device memory in use by every process (NVML)."""
    total: int | None
    """Device memory (NVML)."""
    allocated: int | None
    """Held by the trainer's tensors (torch)."""
    reserved: int | None
    """Held by the trainer's caching allocator (torch)."""
    peak: int | None
    """Highest ``allocated`` so far (torch)."""


@dataclass(frozen=True)
class HostPoint:
    """The training process on the CPU side at one moment, in bytes."""

    time: float
    step: int | None
    rss: int | None
    """Resident memory of the training process."""
    ram_total: int | None
    """Physical memory of the machine."""


@dataclass
class RunProgress:
    """Everything a view shows about one run, updated by :meth:`apply`."""

    run_id: str | None = None
    state: str = STARTING
    """One of :data:`STATES`."""
    device: str | None = None
    model: str | None = None
    dataset: str | None = None
    total_steps: int | None = None
    start_step: int = 0
    """Where the latest launch started (above 0 after a resume)."""
    step: int = 0
    epoch: float = 0.0
    steps: list[StepPoint] = field(default_factory=list)
    """Loss, smoothed loss, lr and throughput series, one point a step, every launch."""
    evals: list[EvalPoint] = field(default_factory=list)
    gpus: dict[int, list[GpuPoint]] = field(default_factory=dict)
    """Memory series per GPU index."""
    gpu_names: dict[int, str] = field(default_factory=dict)
    host: list[HostPoint] = field(default_factory=list)
    """Memory series of the training process on the CPU side (RSS, total RAM)."""
    tokens_per_s: float | None = None
    eta_s: float | None = None
    """The child's estimate at the last step."""
    estimate: dict[str, Any] | None = None
    """The pre-flight memory estimate the child made (``started`` event)."""
    last_checkpoint: ev.Checkpoint | None = None
    final: ev.Finished | None = None
    """The final metrics, once finished."""
    failure: str | None = None
    """Why it failed or was lost."""
    launches: int = 0
    last_time: float | None = None
    """Time of the latest event (Unix seconds)."""
    _earlier_s: float = 0.0
    _launch_start: float | None = None
    _ema: float = 0.0
    _ema_weight: float = 0.0

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def replay(cls, path: Path) -> RunProgress:
        """The progress of the run whose ``metrics.jsonl`` is ``path``.

        Raises:
            EventError: a line in the middle of the file is not an event (names file and line).
        """
        progress = cls()
        for event in ev.replay(path):
            progress.apply(event)
        return progress

    def apply(self, event: ev.Event) -> None:
        """Take one event into account (events of unknown types are ignored)."""
        if self.run_id is None:
            self.run_id = event.run_id
        if isinstance(event, ev.Started):
            self._started(event)
        elif isinstance(event, ev.Step):
            self._step(event)
        elif isinstance(event, ev.Eval):
            self.evals.append(EvalPoint(event.step, self.epoch, event.eval_loss, event.time))
        elif isinstance(event, ev.Memory):
            self._memory(event)
        elif isinstance(event, ev.Checkpoint):
            self.last_checkpoint = event
        elif isinstance(event, ev.Stopped):
            self.state, self.step, self.eta_s = STOPPED, event.step, None
        elif isinstance(event, ev.Finished):
            self.state, self.step, self.final, self.eta_s = FINISHED, event.step, event, 0.0
        elif isinstance(event, ev.Failed):
            self.state, self.failure, self.eta_s = FAILED, event.message, None
        if self._launch_start is None:
            self._launch_start = event.time
        self.last_time = max(event.time, self.last_time or event.time)

    def mark_lost(self, message: str = "process lost") -> None:
        """The child ended without a final event (killed, crashed): say so."""
        self.state, self.failure, self.eta_s = LOST, message, None

    def _started(self, event: ev.Started) -> None:
        if self._launch_start is not None and self.last_time is not None:
            self._earlier_s += self.last_time - self._launch_start
        self._launch_start = event.time
        self.launches += 1
        self.state = RUNNING
        self.failure = None
        self.device, self.model, self.dataset = event.device, event.model, event.dataset
        self.total_steps, self.start_step = event.total_steps, event.start_step
        self.step = event.start_step
        self.estimate = event.estimate
        # A resumed launch repeats nothing, but a launch killed after its last checkpoint
        # did steps the resume does again: those points give way to the new ones.
        self.steps = [p for p in self.steps if p.step <= event.start_step]
        self.evals = [p for p in self.evals if p.step <= event.start_step]
        self._reset_smoothing()

    def _reset_smoothing(self) -> None:
        self._ema = self._ema_weight = 0.0
        for point in self.steps:
            self._smooth(point.loss)

    def _smooth(self, loss: float) -> float:
        if math.isfinite(loss):
            self._ema = SMOOTHING * self._ema + (1 - SMOOTHING) * loss
            self._ema_weight = SMOOTHING * self._ema_weight + (1 - SMOOTHING)
        return self._ema / self._ema_weight if self._ema_weight else math.nan

    def _step(self, event: ev.Step) -> None:
        self.state = RUNNING
        self.step, self.epoch, self.total_steps = event.step, event.epoch, event.total_steps
        self.tokens_per_s, self.eta_s = event.tokens_per_s, event.eta_s
        self.steps.append(
            StepPoint(
                step=event.step,
                epoch=event.epoch,
                loss=event.loss,
                smoothed_loss=self._smooth(event.loss),
                lr=event.lr,
                tokens_per_s=event.tokens_per_s,
                tokens_seen=event.tokens_seen,
                time=event.time,
            )
        )

    def _memory(self, event: ev.Memory) -> None:
        for gpu in event.gpus:
            if gpu.name:
                self.gpu_names[gpu.index] = gpu.name
            self.gpus.setdefault(gpu.index, []).append(
                GpuPoint(
                    event.time,
                    event.step,
                    gpu.used,
                    gpu.total,
                    gpu.allocated,
                    gpu.reserved,
                    gpu.peak,
                )
            )
        if event.rss is not None or event.ram_total is not None:
            self.host.append(HostPoint(event.time, event.step, event.rss, event.ram_total))

    # -- reading -------------------------------------------------------------------------------

    @property
    def loss(self) -> float | None:
        return self.steps[-1].loss if self.steps else None

    @property
    def smoothed_loss(self) -> float | None:
        return self.steps[-1].smoothed_loss if self.steps else None

    @property
    def lr(self) -> float | None:
        return self.steps[-1].lr if self.steps else None

    @property
    def eval_loss(self) -> float | None:
        return self.evals[-1].eval_loss if self.evals else None

    @property
    def fraction(self) -> float:
        """How much of the run is done, 0 to 1."""
        if not self.total_steps:
            return 1.0 if self.state == FINISHED else 0.0
        return min(1.0, self.step / self.total_steps)

    def elapsed_s(self, now: float | None = None) -> float:
        """Training time over every launch so far; ``now`` extends a running launch to now."""
        if self._launch_start is None:
            return 0.0
        end = now if now is not None and self.state == RUNNING else self.last_time
        return self._earlier_s + max(0.0, (end or self._launch_start) - self._launch_start)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds to the end: the child's estimate at its last step, less the time since."""
        if self.eta_s is None or self.state != RUNNING:
            return self.eta_s
        since = (now - self.steps[-1].time) if now is not None and self.steps else 0.0
        return max(0.0, self.eta_s - max(0.0, since))

    def gpu_label(self, index: int) -> str:
        name = self.gpu_names.get(index)
        return f"GPU {index}: {name}" if name else f"GPU {index}"

    def memory_text(self) -> str:
        """The latest memory reading in a few words: each GPU used/total, or the process's RAM."""
        parts = []
        for index in sorted(self.gpus):
            point = self.gpus[index][-1]
            if point.used is not None and point.total is not None:
                parts.append(f"GPU{index} {format_bytes(point.used)}/{format_bytes(point.total)}")
            elif point.allocated is not None:
                parts.append(f"GPU{index} {format_bytes(point.allocated)}")
        if parts:
            return "  ".join(parts)
        if self.host and self.host[-1].rss:
            host = self.host[-1]
            total = f"/{format_bytes(host.ram_total)}" if host.ram_total else ""
            return f"RAM {format_bytes(host.rss)}{total}"
        return ""

    def status_line(self, now: float | None = None) -> str:
        """One line: step, loss, lr, throughput, elapsed, ETA, memory (the CLI's progress line)."""
        if not self.steps or self.steps[-1].step != self.step:
            at = f" at step {self.step}/{self.total_steps}" if self.total_steps else ""
            return f"{self.state}{at}  {self.memory_text()}".rstrip()
        point = self.steps[-1]
        smoothed = (
            f" (smoothed {point.smoothed_loss:.4f})" if math.isfinite(point.smoothed_loss) else ""
        )
        return (
            f"step {self.step}/{self.total_steps}  loss {point.loss:.4f}{smoothed}  "
            f"lr {point.lr:.2e}  {point.tokens_per_s:,.0f} tok/s  "
            f"elapsed {duration(self.elapsed_s(now))}  ETA {duration(self.eta(now))}  "
            f"{self.memory_text()}"
        ).rstrip()


def duration(seconds: float | None) -> str:
    """``H:MM:SS``, or ``-`` when unknown."""
    if seconds is None or seconds != seconds:
        return "-"
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def event_line(event: ev.Event) -> str | None:
    """The line for an event worth one of its own (None for steps and memory readings)."""
    if isinstance(event, ev.Started):
        resumed = f", resuming at step {event.start_step}" if event.start_step else ""
        dropped = (
            f"; {event.dropped_examples} examples truncated or dropped (too long)"
            if event.dropped_examples
            else ""
        )
        examples = f"{event.train_examples} examples, " if event.train_examples is not None else ""
        return (
            f"Training on {event.device}: {event.total_steps} steps, {examples}"
            f"{event.trainable_params:,} trainable of {event.total_params:,} parameters"
            f"{resumed}{dropped}"
        )
    if isinstance(event, ev.Eval):
        return f"eval loss {event.eval_loss:.4f} at step {event.step}"
    if isinstance(event, ev.Checkpoint):
        return f"checkpoint {event.name}"
    if isinstance(event, ev.Stopped):
        saved = f" (checkpoint {event.checkpoint})" if event.checkpoint else ""
        return f"stopped at step {event.step}{saved}"
    if isinstance(event, ev.Finished):
        return f"finished at step {event.step}: " + final_metrics(event)
    if isinstance(event, ev.Failed):
        return f"failed: {event.message}"
    return None


def final_metrics(done: ev.Finished) -> str:
    """Train and eval loss, tokens, wall time and peak memory of a finished run, in one phrase."""
    parts = []
    if done.train_loss is not None and math.isfinite(done.train_loss):
        parts.append(f"train loss {done.train_loss:.4f}")
    if done.eval_loss is not None and math.isfinite(done.eval_loss):
        parts.append(f"eval loss {done.eval_loss:.4f}")
    parts.append(f"{done.tokens_seen or 0:,} tokens")
    parts.append(f"{duration(done.total_wall_s or done.wall_s)} wall")
    if done.peak_memory:
        parts.append(f"peak memory {format_bytes(done.peak_memory)}")
    return ", ".join(parts)


def clock(seconds: float) -> str:
    """A local wall-clock time for event listings."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
