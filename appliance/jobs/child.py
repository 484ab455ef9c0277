"""The child side of a job: ``python -m appliance.jobs KIND --home HOME``.

1. :func:`appliance.offline.enforce` before anything else;
2. fd 1 is pointed at stderr, so a library that prints cannot corrupt the event stream, which
   goes to the original stdout, one flushed line per event;
3. the request line is read from stdin (:func:`appliance.jobs.request.parse_request`);
4. the kind's handler runs with a :class:`JobContext` and returns the result's data;
5. ``result`` and exit 0, or ``failed`` with the CLI's one-line message and its exit code.

SIGTERM (the parent's Cancel) raises :class:`JobCancelled` in the handler at the next Python
instruction: ``finally`` blocks and context managers clean up, then ``failed`` with kind
``cancelled`` and exit 130. Only the first SIGTERM counts, and none after the handler called
:func:`appliance.cancel.point_of_no_return` (see :mod:`appliance.cancel`): such a job finishes
and reports its result.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from appliance import offline
from appliance.cancel import Cancelled, point_of_no_return, raise_on_sigterm
from appliance.errors import ApplianceError, UsageError
from appliance.jobs.events import JobEvent, JobFailed, JobOutput, JobProgress, JobResult
from appliance.jobs.kinds import KINDS
from appliance.jobs.request import KeyRing, parse_request

if TYPE_CHECKING:
    from appliance.registry import Registry
    from appliance.workspace import Workspace

CANCELLED_EXIT = 130
PROGRESS_INTERVAL_S = 0.1
"""Progress events of one stage are sent at most this often (the first and last always)."""


JobCancelled = Cancelled
"""Raised in the job's main thread when the parent asks it to stop (SIGTERM)."""


class EventWriter:
    """Writes job events as JSON lines to a stream, flushed, from any thread."""

    def __init__(self, stream: IO[str], kind: str) -> None:
        self.stream = stream
        self.kind = kind
        self._lock = threading.Lock()

    def emit(self, event: JobEvent) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()


class JobContext:
    """What a handler gets: the workspace, its parameters and keys, and ways to report."""

    def __init__(
        self,
        kind: str,
        home: Path,
        params: dict[str, Any],
        keys: KeyRing,
        audit_key: bytes | None,
        writer: EventWriter,
        commands: IO[str] | None = None,
    ) -> None:
        self.kind = kind
        self.home = home
        self.params = params
        self.keys = keys
        self.audit_key = audit_key
        self._writer = writer
        self._commands = commands
        self._last_stage = ""
        self._last_sent = 0.0

    @property
    def ws(self) -> Workspace:
        """The workspace (opened on first use)."""
        from appliance.workspace import open_workspace

        ws = getattr(self, "_ws", None)
        if ws is None:
            ws = open_workspace(self.home)
            self._ws = ws
        return ws

    def registry(self) -> Registry:
        """Open the registry (with the audit key when the parent gave one); close it after use."""
        from appliance.registry import Registry

        return Registry.open(self.ws, audit_key=self.audit_key)

    def progress(self, done: int, total: int = 0, stage: str = "", message: str = "") -> None:
        """Report progress; calls of one stage closer than 0.1 s apart are merged.

        Has the signature of the core's ``progress(done, total, stage)`` callbacks, so it can be
        passed to them as it is.
        """
        now = time.monotonic()
        final = total > 0 and done >= total
        if stage == self._last_stage and not final and now - self._last_sent < PROGRESS_INTERVAL_S:
            return
        self._last_stage, self._last_sent = stage, now
        self._writer.emit(
            JobProgress(
                job=self.kind, done=int(done), total=int(total), stage=stage, message=message
            )
        )

    def output(self, **data: Any) -> None:
        """Stream a piece of the result (e.g. tokens) to the parent at once."""
        self._writer.emit(JobOutput(job=self.kind, data=data))

    def next_command(self) -> dict[str, Any] | None:
        """For an interactive job: the next JSON command line on stdin, None when stdin closed.

        Raises:
            UsageError: a line that is not a JSON object.
        """
        if self._commands is None:
            return None
        line = self._commands.readline()
        if not line:
            return None
        try:
            command = json.loads(line)
        except (ValueError, RecursionError):
            raise UsageError("a command on stdin is not valid JSON") from None
        if not isinstance(command, dict):
            raise UsageError("a command on stdin is not a JSON object")
        return command


def _take_stdout() -> IO[str]:
    """The original stdout for events; fd 1 (and ``sys.stdout``) now lead to stderr."""
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)


def handler_for(kind: str) -> Any:
    """The handler function of ``kind`` (imported only now: kinds pull in heavy libraries).

    Raises:
        UsageError: an unknown kind, naming the known ones.
    """
    try:
        target = KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise UsageError(f"unknown job kind {kind!r}; the kinds are: {known}") from None
    module_name, _, function = target.partition(":")
    return getattr(importlib.import_module(module_name), function)


def run(kind: str, home: Path, stdin: IO[str], writer: EventWriter) -> int:
    """Run one job to its end; returns the exit code. Every outcome is reported as an event."""
    try:
        event, code = _execute(kind, home, stdin, writer)
        point_of_no_return()  # the outcome is decided: a cancel from now on is ignored
    except JobCancelled:
        event, code = _cancelled(kind), CANCELLED_EXIT
    # Past here SIGTERM is ignored (one cancel was raised, or the point of no return passed),
    # so the final line is never torn.
    writer.emit(event)
    return code


def _cancelled(kind: str) -> JobFailed:
    return JobFailed(job=kind, message="cancelled", kind="cancelled", exit_code=CANCELLED_EXIT)


def _execute(kind: str, home: Path, stdin: IO[str], writer: EventWriter) -> tuple[JobEvent, int]:
    """The job's final event and exit code; the handler's errors become ``failed`` events."""
    try:
        handler = handler_for(kind)
        params, keys, audit_key = parse_request(stdin.readline())
        ctx = JobContext(kind, home, params, keys, audit_key, writer, stdin)
        result = JobResult(job=kind, data=dict(handler(ctx) or {}))
        result.to_json()  # a result that is not JSON-ready is the kind's bug: report it here
        return result, 0
    except JobCancelled:
        return _cancelled(kind), CANCELLED_EXIT
    except ApplianceError as exc:
        usage = isinstance(exc, UsageError)
        failed = JobFailed(
            job=kind, message=str(exc), kind="usage" if usage else "error", exit_code=exc.exit_code
        )
        return failed, exc.exit_code
    except MemoryError:
        return JobFailed(job=kind, message=f"the computer ran out of memory during {kind}"), 1
    except Exception as exc:
        traceback.print_exc()
        message = f"internal error in {kind}: {type(exc).__name__}: {exc}"
        return JobFailed(job=kind, kind="internal", message=message), 1


def main(argv: list[str] | None = None) -> None:
    offline.enforce()
    parser = argparse.ArgumentParser(
        prog="python -m appliance.jobs",
        description="Run one job of the appliance; the request comes as a JSON line on stdin.",
    )
    parser.add_argument("kind", help="the kind of job, e.g. model-import")
    parser.add_argument("--home", type=Path, required=True, help="the workspace folder")
    args = parser.parse_args(argv)
    events = _take_stdout()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.captureWarnings(True)
    raise_on_sigterm()
    writer = EventWriter(events, args.kind)
    code = run(args.kind, args.home, sys.stdin, writer)
    events.flush()
    sys.stderr.flush()
    # Leave without running atexit hooks of heavy libraries that could print or hang.
    os._exit(code)
