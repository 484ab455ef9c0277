"""Child processes of the desktop app, driven through QProcess and reported as Qt signals.

The desktop process never loads torch, transformers, peft or bitsandbytes: heavy work runs in a
child (a job of :mod:`appliance.jobs`, or the training worker) that reports JSON-lines events on
stdout. :class:`ChildProcess` is the one wrapper around QProcess (qutebrowser's
``misc/guiprocess.py`` is the model): it writes the request on stdin, drains stdout and stderr as
data arrives (a pipe that nobody reads fills up and stalls the child), feeds stdout to the core's
incremental :class:`~appliance.events.EventReader`, keeps the last stderr lines, watches for a
child that goes silent, and reports how it ended in a :class:`ChildOutcome`. Nothing is polled:
every signal comes from the child's pipes or its exit.

:class:`JobProcess` is that wrapper for one :class:`~appliance.jobs.JobRequest`, with the signals
a page needs: progress, output, succeeded or failed (always one of them), then done.
"""

from __future__ import annotations

import collections
import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PySide6.QtCore import QObject, QProcess, QTimer, Signal, Slot

from appliance.events import EventReader
from appliance.jobs.events import JobEvent, JobFailed, JobOutput, JobProgress, JobResult, job_reader
from appliance.jobs.request import JobRequest
from appliance.jobs.runner import describe_exit

STDERR_TAIL_LINES = 200
"""How many of the child's last stderr lines are kept (the full log goes to ``log_path``)."""
MAX_STDERR_LINE = 64 * 1024
"""A stderr line longer than this is cut here, so a child that never ends a line is bounded."""
HUNG_LAST_LINES = 5
"""How many stderr lines a ``hung`` message quotes."""
READ_SLICE = 16 * 1024
"""The most stdout read (and parsed into events) in one go: a burst of output is taken in
slices with the event loop running in between, so that it never blocks the window for long."""


@dataclass(frozen=True)
class ChildOutcome:
    """How a child process ended."""

    exit_code: int | None
    """Like :attr:`subprocess.Popen.returncode`: the exit status, or minus the signal that
    killed it; None when it never started."""
    stderr_tail: list[str] = field(default_factory=list)
    """Its last lines of stderr, oldest first."""
    final_event: bool = False
    """Whether a final event (as the caller's ``is_final`` defines it) arrived."""
    stopped: str = ""
    """``terminated`` or ``killed`` when this side stopped it (cancel, kill), else empty."""
    hung: bool = False
    """Whether the watchdog found it silent (at any time while it ran)."""
    error: str = ""
    """Why it could not be started (Qt's words), empty when it started."""
    bad_lines: list[str] = field(default_factory=list)
    """The messages of stdout lines that were not events (the most recent 50)."""

    @property
    def crashed(self) -> bool:
        """Killed by a signal (from this side or anyone else)."""
        return self.exit_code is not None and self.exit_code < 0

    @property
    def signal(self) -> int | None:
        """The signal that killed it, if one did."""
        return -self.exit_code if self.exit_code is not None and self.exit_code < 0 else None


class ChildProcess(QObject):
    """One child process whose stdout is an event stream and whose stderr is its log.

    Args:
        what: names the child in messages, e.g. ``"model-import job"``.
        reader: parses stdout; its ``on_bad_line`` is chained to :attr:`bad_line`.
        is_final: whether an event is the last one the child sends (it then only exits).
        hang_s: emit :attr:`hung` when no event arrived for this long while the child lives;
            None for no watchdog.
        log_path: append the child's stderr to this file as it arrives.
    """

    started = Signal()
    """The child is running and its stdin has been written."""
    event_received = Signal(object)
    """One event parsed from stdout, in order. (Not ``event``: that is QObject's own method.)"""
    bad_line = Signal(str)
    """A stdout line that is not an event: the reader's message naming the line."""
    stderr_line = Signal(str)
    """One line of the child's stderr (for a log console)."""
    hung = Signal(str)
    """The child has sent no event for ``hang_s``: a message with its last stderr lines. Once
    per silence; an event afterwards emits :attr:`resumed`."""
    resumed = Signal()
    """An event arrived after :attr:`hung`."""
    ended = Signal(object)
    """The child is gone (or never started): its :class:`ChildOutcome`. Always the last signal."""

    def __init__(
        self,
        what: str,
        reader: EventReader[Any],
        *,
        is_final: Callable[[Any], bool] | None = None,
        hang_s: float | None = None,
        log_path: Path | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.what = what
        self.reader = reader
        previous = reader.on_bad_line
        reader.on_bad_line = self._chain_bad_line(previous)
        self.is_final = is_final or (lambda _event: False)
        self.hang_s = hang_s
        self.log_path = log_path
        self.outcome: ChildOutcome | None = None
        self.command: list[str] = []
        self._stdin = b""
        self._keep_stdin = False
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_partial = bytearray()
        self._log: IO[bytes] | None = None
        self._final = False
        self._hung = False
        self._was_hung = False
        self._stopped = ""
        self._proc = QProcess(self)
        self._proc.started.connect(self._on_started)
        self._proc.readyReadStandardOutput.connect(self._read_stdout)
        self._proc.readyReadStandardError.connect(self._read_stderr)
        self._proc.finished.connect(self._on_finished)
        self._proc.errorOccurred.connect(self._on_error)
        self._watchdog = QTimer(self)
        self._watchdog.setSingleShot(True)
        self._watchdog.timeout.connect(self._on_silence)
        self._grace = QTimer(self)
        self._grace.setSingleShot(True)
        self._grace.timeout.connect(self.kill)
        self._more_stdout = QTimer(self)
        self._more_stdout.setSingleShot(True)
        self._more_stdout.timeout.connect(self._read_stdout)

    # -- control ---------------------------------------------------------------------------------

    def start(
        self, command: Sequence[str], stdin: bytes = b"", *, keep_stdin: bool = False
    ) -> None:
        """Start ``command``; ``stdin`` is written once it runs, then stdin is closed.

        Args:
            keep_stdin: leave stdin open for :meth:`send` (an interactive child); it is closed
                by :meth:`close_stdin` or when the child ends.

        Raises:
            RuntimeError: this wrapper was started before (one child per wrapper).
        """
        if self.command:
            raise RuntimeError(f"the {self.what} was started already")
        self.command = list(command)
        self._stdin = stdin
        self._keep_stdin = keep_stdin
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed when the child ends)
        self._proc.start(self.command[0], self.command[1:])

    def send(self, line: dict[str, Any]) -> None:
        """Write one JSON line to an interactive child's stdin.

        Raises:
            RuntimeError: the child is not running or its stdin is closed.
        """
        if not self.running or not self._keep_stdin:
            raise RuntimeError(f"the {self.what} does not take commands now")
        self._proc.write((json.dumps(line) + "\n").encode())

    def close_stdin(self) -> None:
        """Close an interactive child's stdin (it then sees the end of its commands)."""
        self._keep_stdin = False
        self._proc.closeWriteChannel()

    def terminate(self, grace_s: float = 5.0) -> None:
        """Ask the child to stop (SIGTERM); SIGKILL if it still lives ``grace_s`` later."""
        if not self.running:
            return
        self._stopped = self._stopped or "terminated"
        self._proc.terminate()
        self._grace.start(max(1, int(grace_s * 1000)))

    @Slot()
    def kill(self) -> None:
        """Kill the child at once (SIGKILL): for a child that does not answer SIGTERM."""
        if not self.running:
            return
        self._stopped = "killed"
        self._proc.kill()

    def wait(self, timeout_s: float) -> bool:
        """Block until the child ended (for shutting down only); whether it did."""
        if not self.running:
            return True
        return self._proc.waitForFinished(int(timeout_s * 1000))

    @property
    def running(self) -> bool:
        return self._proc.state() != QProcess.ProcessState.NotRunning

    @property
    def pid(self) -> int:
        """The child's process id (0 when it is not running)."""
        return int(self._proc.processId())

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr_tail)

    def command_line(self) -> str:
        """The command as one could type it (it holds no secrets: those go over stdin)."""
        return shlex.join(self.command)

    # -- the child's pipes and exit --------------------------------------------------------------

    @Slot()
    def _on_started(self) -> None:
        if self._stdin:
            self._proc.write(self._stdin)
        if not self._keep_stdin:
            self._proc.closeWriteChannel()
        self._stdin = b""  # a request may hold secrets: keep it no longer than needed
        self._arm_watchdog()
        self.started.emit()

    @Slot()
    def _read_stdout(self) -> None:
        data = bytes(self._proc.read(READ_SLICE).data())  # stdout: the current read channel
        if data:
            self._deliver(self.reader.feed(data))
        if self._proc.bytesAvailable() > 0 and not self._more_stdout.isActive():
            self._more_stdout.start(0)

    def _deliver(self, events: list[Any]) -> None:
        for event in events:
            if self.is_final(event):
                self._final = True
                self._watchdog.stop()
            else:
                self._arm_watchdog()
            if self._hung:
                self._hung = False
                self.resumed.emit()
            self.event_received.emit(event)

    @Slot()
    def _read_stderr(self) -> None:
        data = bytes(self._proc.readAllStandardError().data())
        if not data:
            return
        if self._log is not None:
            self._log.write(data)
            self._log.flush()
        buffer = self._stderr_partial
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            self._stderr_text(bytes(buffer[:end]))
            del buffer[: end + 1]
        if len(buffer) > MAX_STDERR_LINE:
            self._stderr_text(bytes(buffer[:MAX_STDERR_LINE]))
            buffer.clear()

    def _stderr_text(self, raw: bytes) -> None:
        # A progress bar redraws its line with \r: keep what a terminal would show.
        text = raw.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1]
        self._stderr_tail.append(text)
        self.stderr_line.emit(text)

    @Slot(int, QProcess.ExitStatus)
    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._more_stdout.stop()
        while data := bytes(self._proc.read(READ_SLICE).data()):
            self._deliver(self.reader.feed(data))
        self._read_stderr()
        self._deliver(self.reader.finish())
        if self._stderr_partial:
            self._stderr_text(bytes(self._stderr_partial))
            self._stderr_partial.clear()
        # On Unix QProcess gives the signal number as the exit code of a crashed child.
        exit_code = -code if status == QProcess.ExitStatus.CrashExit else code
        self._end(exit_code, "")

    @Slot(QProcess.ProcessError)
    def _on_error(self, error: QProcess.ProcessError) -> None:
        # A crash or a pipe error is followed by ``finished``; only a failed start is not.
        if error == QProcess.ProcessError.FailedToStart:
            self._end(None, self._proc.errorString())

    def _end(self, exit_code: int | None, error: str) -> None:
        if self.outcome is not None:
            return
        self._watchdog.stop()
        self._grace.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.outcome = ChildOutcome(
            exit_code=exit_code,
            stderr_tail=list(self._stderr_tail),
            final_event=self._final,
            stopped=self._stopped,
            hung=self._was_hung,
            error=error,
            bad_lines=list(self.reader.bad_lines),
        )
        self.ended.emit(self.outcome)

    # -- the watchdog ----------------------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        if self.hang_s is not None and not self._final:
            self._watchdog.start(max(1, int(self.hang_s * 1000)))

    @Slot()
    def _on_silence(self) -> None:
        if not self.running or self._hung:
            return
        self._hung = self._was_hung = True
        seconds = f"{self.hang_s:g}"
        last = [line for line in self._stderr_tail if line.strip()][-HUNG_LAST_LINES:]
        words = "; its last lines: " + " | ".join(s.strip() for s in last) if last else ""
        self.hung.emit(f"the {self.what} has sent no progress for {seconds} s{words}")

    def _chain_bad_line(self, previous: Callable[[str], None] | None) -> Callable[[str], None]:
        def on_bad_line(message: str) -> None:
            if previous is not None:
                previous(message)
            self.bad_line.emit(message)

        return on_bad_line


class JobProcess(QObject):
    """One job (:class:`~appliance.jobs.JobRequest`) in a child process.

    Exactly one of :attr:`succeeded` and :attr:`failed` is emitted, after the child has exited
    (so its writer lock and temporary files are gone), then :attr:`done`. A child that exits
    without a final event, is killed, cancelled or cannot start is a failure with a one-line
    message. The request's secrets travel on the child's stdin only.

    Args:
        request: what to run.
        hang_s: report :attr:`hung` after this long without an event (None: never).
        log_path: append the child's stderr to this file.
    """

    progress = Signal(int, int, str)
    """done, total (0 when unknown), stage: a ``progress`` event."""
    output = Signal(object)
    """The data (a dict) of an ``output`` event: a streamed piece of the result."""
    succeeded = Signal(object)
    """The data (a dict) of the ``result`` event; emitted once the child exited with 0."""
    failed = Signal(str)
    """Why the job failed, in one line (``"cancelled"`` after :meth:`cancel`)."""
    done = Signal()
    """After succeeded or failed: the child is gone."""
    hung = Signal(str)
    """No event for ``hang_s`` while the child lives; the message quotes its last log lines."""
    resumed = Signal()
    """An event arrived after :attr:`hung`."""

    def __init__(
        self,
        request: JobRequest,
        *,
        hang_s: float | None = 120.0,
        log_path: Path | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.request = request
        self.kind = request.kind
        self.result: dict[str, Any] | None = None
        self.failure: JobFailed | None = None
        self.message = ""
        self.cancelled = False
        self.child = ChildProcess(
            f"{request.kind} job",
            job_reader(f"{request.kind} output"),
            is_final=lambda event: isinstance(event, JobResult | JobFailed),
            hang_s=hang_s,
            log_path=log_path,
            parent=self,
        )
        self.child.event_received.connect(self._on_event)
        self.child.hung.connect(self.hung)
        self.child.resumed.connect(self.resumed)
        self.child.ended.connect(self._on_ended)

    def start(self) -> None:
        """Start the child and hand it the request (and, for an interactive job, keep stdin)."""
        self.child.start(
            self.request.command(),
            self.request.request_line(),
            keep_stdin=self.request.interactive,
        )

    def send(self, command: dict[str, Any]) -> None:
        """Send one command line to an interactive job."""
        self.child.send(command)

    def cancel(self, grace_s: float = 10.0) -> None:
        """Stop the job (SIGTERM: it cleans up and reports ``cancelled``; SIGKILL after grace).

        A job past its point of no return finishes instead and reports :attr:`succeeded`.
        """
        if self.child.running:
            self.cancelled = True
            self.child.terminate(grace_s)

    def kill(self) -> None:
        """Kill the job at once (a hung child); what it left half-made is cleaned up later."""
        self.child.kill()

    def end(self, timeout_s: float) -> None:
        """Cancel the job and wait for it to clean up, killing it if it has not ended within
        ``timeout_s`` (a window that is closing: nothing may outlive it)."""
        if not self.child.running:
            return
        self.cancel(timeout_s)
        if not self.child.wait(timeout_s):
            self.kill()
            self.child.wait(timeout_s)

    @property
    def running(self) -> bool:
        return self.child.running

    @property
    def outcome(self) -> ChildOutcome | None:
        """How the child ended (None while it runs)."""
        return self.child.outcome

    @Slot(object)
    def _on_event(self, event: JobEvent) -> None:
        if isinstance(event, JobProgress):
            self.progress.emit(event.done, event.total, event.stage)
        elif isinstance(event, JobOutput):
            self.output.emit(event.data)
        elif isinstance(event, JobResult):
            self.result = event.data
        elif isinstance(event, JobFailed):
            self.failure = event

    @Slot(object)
    def _on_ended(self, outcome: ChildOutcome) -> None:
        if self.result is not None and outcome.exit_code == 0:
            self.succeeded.emit(self.result)
        else:
            self.message = self._failure_message(outcome)
            self.failed.emit(self.message)
        self.done.emit()

    def _failure_message(self, outcome: ChildOutcome) -> str:
        if self.failure is not None:
            return self.failure.message
        if outcome.error:
            return f"the {self.kind} process could not be started: {outcome.error}"
        if self.cancelled and outcome.stopped:
            return "cancelled"
        if outcome.stopped == "killed":
            last = next(
                (line.strip() for line in reversed(outcome.stderr_tail) if line.strip()), ""
            )
            words = f"; its last words: {last}" if last else ""
            return f"the {self.kind} process was killed from the desktop app{words}"
        return describe_exit(self.kind, outcome.exit_code, outcome.stderr_tail)
