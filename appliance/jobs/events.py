"""The events a job writes on stdout, one JSON line each.

Every event has ``type``, ``job`` (the job's kind, e.g. ``model-import``) and ``time`` (Unix
seconds). A job emits any number of ``progress`` and ``output`` events, then exactly one
``result`` or ``failed``. Unknown fields are ignored and unknown types are refused as bad lines
(they are not fatal to a reader: see :class:`appliance.events.EventReader`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from appliance.events import EventError, EventReader, StreamEvent, decode_object, fields_of


@dataclass(frozen=True, kw_only=True)
class JobEvent(StreamEvent):
    """Fields every job event carries."""

    job: str
    """The job's kind, as on its command line."""
    time: float = field(default_factory=time.time)
    """When it happened, in Unix seconds."""


@dataclass(frozen=True, kw_only=True)
class JobProgress(JobEvent):
    """How far the job has come. ``total`` is 0 when unknown (an indeterminate bar)."""

    TYPE: ClassVar[str] = "progress"
    done: int = 0
    total: int = 0
    stage: str = ""
    """A short machine name of the stage, e.g. ``hashing``, ``merging``, ``verifying``."""
    message: str = ""
    """Optional words for a person, e.g. the file being hashed."""


@dataclass(frozen=True, kw_only=True)
class JobOutput(JobEvent):
    """A piece of a streamed result (e.g. generated tokens); the kind defines ``data``."""

    TYPE: ClassVar[str] = "output"
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class JobResult(JobEvent):
    """The job succeeded; ``data`` is its result (the kind defines it)."""

    TYPE: ClassVar[str] = "result"
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class JobFailed(JobEvent):
    """The job failed; ``message`` is the one line the CLI would print."""

    TYPE: ClassVar[str] = "failed"
    message: str
    kind: str = "error"
    """``error``, ``usage``, ``cancelled`` or ``internal``."""
    exit_code: int = 1


JOB_EVENT_TYPES: dict[str, type[JobEvent]] = {
    cls.TYPE: cls for cls in (JobProgress, JobOutput, JobResult, JobFailed)
}


def parse_job_event(line: str | bytes, where: str = "job output") -> JobEvent:
    """Parse one line into its typed job event.

    Raises:
        EventError: not a JSON object, an unknown ``type``, or a field missing or mistyped.
    """
    data = decode_object(line, where)
    kind = data["type"]
    cls = JOB_EVENT_TYPES.get(kind)
    if cls is None:
        raise EventError(f"{where}: unknown job event type {kind!r}")
    return cls(**fields_of(cls, data, where, kind))


def job_reader(
    source: str = "job output", on_bad_line: Callable[[str], None] | None = None
) -> EventReader[JobEvent]:
    """An incremental reader of job events: ``job_reader().feed(chunk)`` returns whole events."""
    return EventReader(parse_job_event, source, on_bad_line)
