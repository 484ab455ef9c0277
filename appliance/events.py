"""JSON-lines event streams: typed events from dataclasses, and an incremental reader.

Every child process of the appliance (the training worker, and the jobs of :mod:`appliance.jobs`)
reports on stdout as one JSON object per line. The kinds of events differ; the machinery does
not, and lives here: turning a JSON object into a typed, frozen dataclass with a message naming
the field that is wrong (:func:`fields_of`, over :mod:`appliance.hints`), keeping every line
strict JSON (:func:`finite`), and reading a byte stream as it arrives, a chunk at a time, into
whole events (:class:`EventReader`).

Compatibility rule for every stream: a reader ignores fields it does not know, so an older
reader follows a newer child.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from appliance import hints
from appliance.errors import ApplianceError

T = TypeVar("T")

MAX_LINE_BYTES = 16 * 1024 * 1024
"""A line longer than this is not an event: it is dropped (and reported) without being kept."""


class EventError(ApplianceError):
    """A line of an event stream is not a valid event."""


def finite(value: Any) -> Any:
    """``value`` with non-finite floats (a diverged loss) turned into None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def to_json_line(data: dict[str, Any]) -> str:
    """One line of strict JSON (no NaN, no newline inside), without the trailing newline."""
    return json.dumps(finite(data), separators=(",", ":"), allow_nan=False)


class StreamEvent:
    """What every event of a JSON-lines stream does: its ``type`` and its one line of JSON.

    Subclasses are frozen keyword-only dataclasses that set ``TYPE`` and declare their fields
    (a run's events, :mod:`appliance.training.events`; a job's, :mod:`appliance.jobs.events`).
    """

    TYPE: ClassVar[str] = ""

    @property
    def type(self) -> str:
        return self.TYPE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``type`` first; non-finite floats become None."""
        return {"type": self.TYPE, **finite(dataclasses.asdict(self))}  # type: ignore[call-overload]

    def to_json(self) -> str:
        """One line of strict JSON, without the newline."""
        return to_json_line(self.to_dict())


def decode_object(line: str | bytes, where: str) -> dict[str, Any]:
    """Parse one line into a JSON object that has a non-empty string ``type``.

    Raises:
        EventError: not UTF-8, not JSON, not an object, or no ``type``; the message names
            ``where``.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise EventError(f"{where}: not UTF-8 text") from None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EventError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise EventError(f"{where}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise EventError(f"{where}: expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise EventError(f"{where}: the 'type' field is missing or not a string")
    return data


def fields_of(
    cls: type[Any], data: dict[str, Any], where: str, kind: str, prefix: str = ""
) -> dict[str, Any]:
    """The constructor arguments of dataclass ``cls`` read from ``data``, type-checked.

    Unknown keys are ignored (a newer child's fields); a missing required field (``time``
    included) or a value of the wrong type is refused. Non-finite floats, written as null by
    :func:`finite`, read back as NaN.

    Raises:
        EventError: naming ``where``, the event ``kind`` and the field.
    """
    try:
        return hints.build(cls, data, prefix, required=("time",), nan_from_null=True)
    except hints.HintError as exc:
        raise EventError(
            f"{where}: '{kind}' event field '{exc.name}' must be {exc.expected}, "
            f"got {json.dumps(exc.value)}"
        ) from None
    except hints.MissingFieldError as exc:
        raise EventError(f"{where}: '{kind}' event lacks the required field '{exc.name}'") from None


class EventReader(Generic[T]):
    """Turns a byte stream into events as it arrives: ``feed(chunk)`` returns whole lines' events.

    A chunk may end mid-line (a pipe delivers what it has); the rest waits for the next chunk.
    Lines that are not events (a library printing on stdout, a torn write) are not fatal: each is
    described in :attr:`bad_lines` (the most recent 50) and passed to ``on_bad_line``, and reading
    goes on. A line longer than ``max_line`` bytes is dropped as it streams, never held whole.

    Args:
        parse: ``parse(raw_line, where) -> event``, raising :class:`EventError` for a bad line.
        source: names the stream in messages, e.g. ``"training output"``.
        on_bad_line: called with the message of each bad line.
    """

    def __init__(
        self,
        parse: Callable[[bytes, str], T],
        source: str = "output",
        on_bad_line: Callable[[str], None] | None = None,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self.parse = parse
        self.source = source
        self.on_bad_line = on_bad_line
        self.max_line = max_line
        self.line_number = 0
        self.bad_lines: list[str] = []
        self._buffer = bytearray()
        self._skipping = False  # inside an over-long line, dropping bytes up to its newline

    def feed(self, data: bytes) -> list[T]:
        """The events of every line that ``data`` completes, in order."""
        found: list[T] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data[start:])
                return found
            piece = data[start:end]
            start = end + 1
            self.line_number += 1
            if self._skipping:
                self._skipping = False
                self._buffer.clear()
                continue
            self._buffer += piece
            raw = bytes(self._buffer)
            self._buffer.clear()
            if len(raw) > self.max_line:
                self._bad(
                    f"{self.source} line {self.line_number}: longer than {self.max_line} bytes"
                )
                continue
            self._parse_into(raw, found)

    def finish(self) -> list[T]:
        """At the end of the stream: the event of a last line without its newline, if whole."""
        found: list[T] = []
        if self._skipping:
            self._skipping = False
        elif self._buffer.strip():
            self.line_number += 1
            self._parse_into(bytes(self._buffer), found)
        self._buffer.clear()
        return found

    def _keep(self, rest: bytes) -> None:
        if self._skipping:
            return
        self._buffer += rest
        if len(self._buffer) > self.max_line:
            self._bad(
                f"{self.source} line {self.line_number + 1}: longer than {self.max_line} bytes"
            )
            self._buffer.clear()
            self._skipping = True

    def _parse_into(self, raw: bytes, found: list[T]) -> None:
        if not raw.strip():
            return
        try:
            found.append(self.parse(raw, f"{self.source} line {self.line_number}"))
        except EventError as exc:
            self._bad(str(exc))

    def _bad(self, message: str) -> None:
        self.bad_lines.append(message)
        del self.bad_lines[:-50]
        if self.on_bad_line is not None:
            self.on_bad_line(message)
