"""The JSON-lines event stream: the one contract between the training child and its parent.

The child writes one JSON object per line on stdout (flushed per line) and appends the same line
to the run folder's ``metrics.jsonl``. Every event has ``type``, ``run_id`` and ``time`` (Unix
seconds). The parent, the CLI and the GUI read lines with :func:`parse_event`, and any run can be
replayed from its file with :func:`replay`.

Compatibility: a parser ignores fields it does not know, and a ``type`` it does not know becomes an
:class:`UnknownEvent`, so an older reader follows a newer child. Missing required fields and values
of the wrong type are refused with a message naming the field. Floats that are not finite (a
diverged loss) travel as ``null``, keeping every line strict JSON, and read back as NaN.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from appliance.events import EventError, EventReader, StreamEvent, decode_object, fields_of
from appliance.fsutil import open_append

METRICS_FILE = "metrics.jsonl"

log = logging.getLogger("appliance.training")

__all__ = ["EventError", "EventReader"]


@dataclass(frozen=True, kw_only=True)
class Event(StreamEvent):
    """Fields every event carries."""

    run_id: str
    """The run this event belongs to."""
    time: float = field(default_factory=time.time)
    """When it happened, in Unix seconds."""


@dataclass(frozen=True, kw_only=True)
class Started(Event):
    """The child has loaded the model and data and is about to train."""

    TYPE: ClassVar[str] = "started"
    model: str
    """The base model, as NAME@VERSION or a path."""
    dataset: str
    """The dataset version, as NAME@VERSION."""
    device: str
    """Where it trains: ``cuda:0``, ``cpu``..."""
    trainable_params: int
    total_params: int
    total_steps: int
    """Optimizer steps the run will make in all."""
    start_step: int = 0
    """Step the run starts from (above 0 after a resume)."""
    train_examples: int | None = None
    dropped_examples: int = 0
    """Conversations dropped or truncated for being longer than the maximum sequence length."""
    estimate: dict[str, Any] | None = None
    """The pre-flight memory estimate (:meth:`MemoryEstimate.to_dict`)."""
    pid: int | None = None
    world_size: int | None = None
    """Processes training together (None: one, from a version before several were possible)."""
    nnodes: int | None = None
    """Machines taking part."""
    node_rank: int | None = None
    """The machine whose first process wrote this stream (0 owns the run)."""
    backend: str | None = None
    """torch.distributed backend (``gloo``, ``nccl``) when world_size is above 1."""
    parallel: str | None = None
    """``ddp`` or ``fsdp``."""
    devices: list[str] | None = None
    """Each process's device by global rank: ``cuda:0 (NVIDIA H200)``, ``cpu``..."""
    global_batch: int | None = None
    """Sequences per optimizer step: micro-batch x accumulation x world size."""
    batching: str | None = None
    """How examples form micro-batches: padded, grouped (by length) or packed."""
    padding_share: list[float] | None = None
    """Share of the computed positions that are padding, for each epoch the run touches."""
    loss_path: str | None = None
    """``chunked`` (hidden states of labelled positions, in chunks) or ``logits`` (whole)."""
    attention: str | None = None
    """The attention implementation (sdpa, eager, flash_attention_2...)."""


@dataclass(frozen=True, kw_only=True)
class Step(Event):
    """One optimizer step done."""

    TYPE: ClassVar[str] = "step"
    step: int
    """Optimizer steps done so far, counted from 1."""
    total_steps: int
    epoch: float
    """Fractional epoch: 1.5 is half-way through the second pass."""
    loss: float
    """Mean training loss over the step's micro-batches (NaN when it diverged)."""
    lr: float
    """Learning rate used for this step."""
    tokens_per_s: float
    """Real (non-padding) tokens trained per second over recent steps."""
    eta_s: float | None = None
    """Estimated seconds to the end of the run."""
    grad_norm: float | None = None
    tokens_seen: int | None = None
    """Real tokens trained so far."""
    label_tokens: int | None = None
    """Tokens the step's loss was taken on (its denominator)."""
    padding_share: float | None = None
    """Share of the positions this step computed that were padding."""


@dataclass(frozen=True, kw_only=True)
class Eval(Event):
    """An evaluation on the held-out split."""

    TYPE: ClassVar[str] = "eval"
    step: int
    eval_loss: float
    eval_examples: int | None = None


@dataclass(frozen=True, kw_only=True)
class GpuMemory:
    """One GPU's memory: the device as NVML sees it, and this process's torch allocator."""

    index: int
    name: str = ""
    used: int | None = None
    """Bytes in use on the device by every process (NVML), None if NVML cannot read it."""
    total: int | None = None
    """Bytes on the device (NVML)."""
    allocated: int | None = None
    """Bytes held by tensors of this process (``torch.cuda.memory_allocated``)."""
    reserved: int | None = None
    """Bytes reserved by this process's caching allocator (``memory_reserved``)."""
    peak: int | None = None
    """Highest ``allocated`` since the run started (``max_memory_allocated``)."""
    rank: int | None = None
    """Global rank of the training process on this GPU, in a run of several processes."""
    node: int | None = None
    """Machine (node rank) of this GPU, in a run over several machines: ``index`` is local to it."""


@dataclass(frozen=True, kw_only=True)
class Memory(Event):
    """Memory readouts, at least once a second while training on a GPU."""

    TYPE: ClassVar[str] = "memory"
    step: int | None = None
    gpus: list[GpuMemory] = field(default_factory=list)
    """One entry per GPU used by the run; empty on CPU."""
    rss: int | None = None
    """Resident memory of the training process in bytes."""
    ram_total: int | None = None
    """Physical memory of the machine in bytes: what ``rss`` is set against on a CPU."""
    rank_rss: list[int] | None = None
    """Resident memory of every process by global rank, in a run of several processes (``rss``
    is then the first one's); gathered once a step."""


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Event):
    """A resumable checkpoint was written and verified."""

    TYPE: ClassVar[str] = "checkpoint"
    step: int
    name: str
    """Folder name of the checkpoint inside the run folder."""
    bytes: int | None = None


@dataclass(frozen=True, kw_only=True)
class Stopped(Event):
    """The run stopped on request after saving a checkpoint; it can be resumed."""

    TYPE: ClassVar[str] = "stopped"
    step: int
    checkpoint: str | None = None
    reason: str = "stop requested"


@dataclass(frozen=True, kw_only=True)
class Finished(Event):
    """The run completed and its adapter was saved."""

    TYPE: ClassVar[str] = "finished"
    step: int
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_seen: int | None = None
    wall_s: float
    """Seconds from start to finish, this launch only."""
    total_wall_s: float | None = None
    """Training seconds over every launch of the run (stops and resumes included)."""
    peak_memory: int | None = None
    """Peak bytes: torch's peak allocation on a GPU, the process's peak RSS on CPU."""
    adapter: str | None = None
    """Where the adapter was stored (NAME@VERSION or a folder); None on a machine other than
    node 0 of a run over several machines, which writes no adapter."""


@dataclass(frozen=True, kw_only=True)
class Failed(Event):
    """The run failed; ``message`` is written for the user."""

    TYPE: ClassVar[str] = "failed"
    message: str
    step: int | None = None
    kind: str = "error"
    """A category for programs: error, oom, data, config, interrupted."""
    rank: int | None = None
    """In a run of several processes: the global rank whose failure ended the run."""


@dataclass(frozen=True, kw_only=True)
class Spawned(Event):
    """The worker process was started by a stand-in (:mod:`appliance.training.standin`).

    Only on the stand-in's stdout, never in ``metrics.jsonl``: it names the process that trains,
    so that the parent records that PID (the stand-in may be gone while the worker trains on).
    """

    TYPE: ClassVar[str] = "spawned"
    pid: int
    """The worker's process id."""


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(Event):
    """An event of a type this version does not know (from a newer child); kept, not refused."""

    name: str
    """The event's ``type``."""
    data: dict[str, Any] = field(default_factory=dict)
    """Every other field, as read."""

    @property
    def type(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.name, "run_id": self.run_id, "time": self.time, **self.data}


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (Started, Step, Eval, Memory, Checkpoint, Stopped, Finished, Failed, Spawned)
}


# --- parsing -----------------------------------------------------------------------------------


def parse_event(line: str | bytes, where: str = "event") -> Event:
    """Parse one line of the stream into its typed event.

    Args:
        line: one JSON object (surrounding whitespace allowed).
        where: names the source in error messages, e.g. ``metrics.jsonl line 12``.

    Raises:
        EventError: the line is not JSON, not an object, lacks ``type``/``run_id``/``time`` or
            a required field, or has a value of the wrong type.
    """
    data = decode_object(line, where)
    kind = data["type"]
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        base = fields_of(Event, data, where, kind)
        rest = {k: v for k, v in data.items() if k not in ("type", "run_id", "time")}
        return UnknownEvent(name=kind, data=rest, **base)
    return cls(**fields_of(cls, data, where, kind))


def reader(
    source: str = "training output", on_bad_line: Callable[[str], None] | None = None
) -> EventReader[Event]:
    """An incremental reader of training events: ``reader().feed(chunk)`` returns whole events."""
    return EventReader(parse_event, source, on_bad_line)


# --- files -------------------------------------------------------------------------------------


def replay(path: Path) -> Iterator[Event]:
    """Yield the events of a ``metrics.jsonl`` in order.

    A last line without its newline that does not parse is skipped: it is a write torn by a
    crash or a kill, and the events before it still stand. Blank lines are ignored.

    Raises:
        EventError: any other line that is not a valid event, naming the file and line.
    """
    path = Path(path)
    text = path.read_bytes()
    lines = text.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        torn = number == len(lines)  # only the final chunk can lack a newline
        try:
            yield parse_event(raw, where=f"{path.name} line {number}")
        except EventError:
            if torn:
                return
            raise


class EventLog:
    """Writes events to a stream (the child's stdout) and appends them to ``metrics.jsonl``.

    Each line is flushed at once, so the parent and a crash both see every whole event. Safe to
    use from several threads (the training loop and a memory sampler): lines never interleave.
    """

    def __init__(self, path: Path | None, stream: IO[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.stream = stream
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if self.path is not None:
            # Owner-only like every file of the workspace; closed in close().
            self._file = os.fdopen(open_append(self.path), "a", encoding="utf-8")

    def emit(self, event: Event) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()
            if self.stream is not None:
                try:
                    self.stream.write(line)
                    self.stream.flush()
                except (BrokenPipeError, ValueError):
                    # The parent that read the stream is gone (killed, or its terminal closed):
                    # training goes on and the events still reach metrics.jsonl, from which any
                    # later command settles the run. Closed now, so that nothing retries the
                    # write (and prints a traceback) when the process exits.
                    with contextlib.suppress(OSError, ValueError):
                        self.stream.close()
                    self.stream = None
                    log.warning(
                        "the parent stopped reading the events; they go on to %s", self.path
                    )

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
