"""Running a job from a process without Qt (the CLI, tests, benchmarks): start, follow, wait."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from appliance.errors import ApplianceError
from appliance.jobs.events import JobEvent, JobFailed, JobResult, job_reader
from appliance.jobs.request import JobRequest

STDERR_TAIL_LINES = 40


class JobError(ApplianceError):
    """A job failed; the message is the job's own one line (or why it ended without one)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class JobOutcome:
    """How a job ended."""

    kind: str
    exit_code: int
    result: JobResult | None = None
    failed: JobFailed | None = None
    events: list[JobEvent] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result is not None and self.exit_code == 0

    @property
    def message(self) -> str:
        """Why it failed, in one line (empty when it succeeded)."""
        if self.ok:
            return ""
        if self.failed is not None:
            return self.failed.message
        return describe_exit(self.kind, self.exit_code, self.stderr_tail)

    def data(self) -> dict[str, Any]:
        """The result's data.

        Raises:
            JobError: the job failed, with its message and exit code.
        """
        if not self.ok or self.result is None:
            code = self.failed.exit_code if self.failed is not None else 1
            raise JobError(self.message, code)
        return self.result.data


def describe_exit(kind: str, exit_code: int | None, stderr_tail: list[str]) -> str:
    """Why a job ended without a final event, with its last line of stderr."""
    if exit_code is None:
        how = "was lost"
    elif exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        hint = "; the system may have run out of memory" if -exit_code == signal.SIGKILL else ""
        how = f"was killed by {name}{hint}"
    else:
        how = f"exited with code {exit_code} without a report"
    last = next((line for line in reversed(stderr_tail) if line.strip()), "")
    return f"the {kind} process {how}" + (f"; its last words: {last.strip()}" if last else "")


def run_job(
    request: JobRequest,
    on_event: Callable[[JobEvent], None] | None = None,
    commands: list[dict[str, Any]] | None = None,
    timeout: float | None = None,
) -> JobOutcome:
    """Start the job, follow its events until it ends, and return how it ended.

    Args:
        on_event: called with each event as it arrives (in this thread).
        commands: for an interactive job, the command lines to send after the request; stdin
            is closed after them.
        timeout: kill the child after this many seconds (then it ends as killed).
    """
    import json

    proc = subprocess.Popen(
        request.command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    drain = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)
    drain.start()
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer is not None:
        timer.start()
    try:
        payload = request.request_line()
        for command in commands or []:
            payload += (json.dumps(command) + "\n").encode()
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died at once; its exit code tells why
        reader = job_reader(f"{request.kind} output")
        outcome = JobOutcome(request.kind, exit_code=0)
        while chunk := os.read(proc.stdout.fileno(), 65536):
            for event in reader.feed(chunk):
                _record(outcome, event, on_event)
        for event in reader.finish():
            _record(outcome, event, on_event)
        outcome.exit_code = proc.wait()
        drain.join()
        outcome.stderr_tail = list(tail)
        outcome.bad_lines = list(reader.bad_lines)
        return outcome
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _record(
    outcome: JobOutcome, event: JobEvent, on_event: Callable[[JobEvent], None] | None
) -> None:
    outcome.events.append(event)
    if isinstance(event, JobResult):
        outcome.result = event
    elif isinstance(event, JobFailed):
        outcome.failed = event
    if on_event is not None:
        on_event(event)


def _drain(stream: IO[bytes], tail: collections.deque[str]) -> None:
    for raw in stream:
        tail.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
