"""The training child as its parent sees it: the command line, a started process, its fate.

:func:`worker_command` is the line a user could type; :class:`TrainingProcess` is a child started
by :func:`appliance.training.runs.launch` whose stdout is read with the core's incremental
:class:`~appliance.events.EventReader` (the desktop app feeds the same reader from QProcess);
:func:`process_alive` tells whether a recorded PID is still that run's worker, and
:func:`describe_exit` says in words why a child ended without a final event. No torch here.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.events import EventReader
from appliance.training import events as ev

LOST = "process lost"
"""The failure reason of a run whose process ended and left no word of how."""
READ_CHUNK = 64 * 1024


def worker_command(folder: Path, threads: int | None = None) -> list[str]:
    """The child's command line: the same one a user could type."""
    command = [sys.executable, "-m", "appliance.training.worker", str(folder)]
    if threads:
        command += ["--threads", str(threads)]
    return command


@dataclass
class TrainingProcess:
    """A started child. Iterate :meth:`events`, then :meth:`wait`; :meth:`stop` asks it to end."""

    run_id: str
    folder: Path
    proc: subprocess.Popen[bytes]
    on_bad_line: Callable[[str], None] | None = None
    """Called with the message of each stdout line that is not an event."""
    reader: EventReader[ev.Event] = field(init=False)
    _pending: collections.deque[ev.Event] = field(init=False, default_factory=collections.deque)

    def __post_init__(self) -> None:
        self.reader = ev.reader("training output", self.on_bad_line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> Iterator[ev.Event]:
        """Typed events as the child emits them, until its stdout closes.

        Safe to call again after an interruption (Ctrl-C while following): the reader and the
        events already read but not yet handed out are kept on the process, so none is lost.
        """
        stdout = self.proc.stdout
        if stdout is None:
            return
        while True:
            while self._pending:
                yield self._pending.popleft()
            if stdout.closed:
                return
            chunk = os.read(stdout.fileno(), READ_CHUNK)
            if chunk:
                self._pending.extend(self.reader.feed(chunk))
            else:
                self._pending.extend(self.reader.finish())
                stdout.close()

    def stop(self) -> None:
        """Ask for a graceful stop (SIGTERM): the child checkpoints and emits ``stopped``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)


def process_alive(pid: int | None, run_id: str) -> bool:
    """Whether ``pid`` is still this run's training process (not a zombie, not a reused PID)."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
        return (
            status not in ("Z", "X")
            and "appliance.training.worker" in cmdline
            and (run_id in cmdline)
        )
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_run(pid: int | None, run_id: str, signum: int) -> bool:
    """Send ``signum`` to the run's worker if ``pid`` is still that worker; whether it was sent.

    SIGTERM asks for a graceful stop (checkpoint, ``stopped``), SIGKILL ends it at once. Never
    blocks: the caller learns the outcome from the event stream or the process's exit.
    """
    if not process_alive(pid, run_id):
        return False
    assert pid is not None
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def describe_exit(code: int | None) -> str:
    """Why a child ended without reporting, in words (``code`` negative: killed by that signal)."""
    if code is None:
        return LOST
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = "; the system may have run out of memory" if -code == signal.SIGKILL else ""
        return f"the training process was killed by {name}{hint}"
    return f"the training process exited with code {code} without a report"
