"""Light background work: slower than ~50 ms, so off the GUI thread, but torch-free.

A :class:`Task` runs one callable on Qt's global thread pool and reports through signals, which
Qt delivers on the GUI thread. The callable receives a ``progress(done, total, stage)`` function
to call as it goes; errors become a one-line message, as in the CLI.

For light work only: the key derivation of the passphrase dialog, SQLite reads, settling runs.
Anything that needs torch, transformers, peft or bitsandbytes (or holds the GIL for long) runs
as a job in a child process instead (:class:`gui.process.JobProcess`): a thread here would load
those libraries into the desktop process and could freeze its window.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from appliance.errors import ApplianceError

Progress = Callable[[int, int, str], None]


class Task(QObject):
    """One piece of background work. Connect to the signals, then call :meth:`start`."""

    progress = Signal(int, int, str)
    """done, total (0 when unknown), stage: emitted from the worker, delivered on the GUI thread."""
    succeeded = Signal(object)
    """The callable's return value."""
    failed = Signal(str)
    """A message for the user: the ApplianceError's text, or an internal error line."""
    done = Signal()
    """Emitted after succeeded or failed."""
    _completed = Signal(object, object)
    """The worker's one report (result, error); fanned out on the GUI thread."""

    def __init__(
        self, name: str, fn: Callable[[Progress], Any], parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.name = name
        self._fn = fn
        self.running = False
        self.result: Any = None
        self.error: str | None = None
        self._completed.connect(self._finish)

    def start(self, pool: QThreadPool | None = None) -> None:
        self.running = True
        (pool or QThreadPool.globalInstance()).start(_Runner(self))

    def _report_progress(self, done: int, total: int, stage: str) -> None:
        with contextlib.suppress(RuntimeError):  # the task's owner was closed meanwhile
            self.progress.emit(int(done), int(total), stage)

    def _finish(self, result: Any, error: str | None) -> None:
        # Runs on the GUI thread (queued from the worker), so the three signals go out in order.
        self.result, self.error, self.running = result, error, False
        if error is None:
            self.succeeded.emit(result)
        else:
            self.failed.emit(error)
        self.done.emit()


class _Runner(QRunnable):
    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def run(self) -> None:
        task = self.task
        result: Any = None
        error: str | None = None
        try:
            result = task._fn(task._report_progress)
        except ApplianceError as exc:
            error = str(exc)
        except Exception as exc:
            traceback.print_exc()
            error = f"internal error in {task.name}: {type(exc).__name__}: {exc}"
        # One emit, queued to the GUI thread; if the task's owner was closed meanwhile there is
        # nobody left to tell.
        with contextlib.suppress(RuntimeError):
            task._completed.emit(result, error)


def delete_when_done(obj: QObject, tasks: list[Task]) -> None:
    """``obj.deleteLater()`` once none of ``tasks`` (its children) runs any more.

    A dialog closed while its task still works must outlive it: deleting it would delete the
    task, and the task's ``done`` (which, for a task on the vault, a lock waits for) would never
    be emitted.
    """
    running = [t for t in tasks if t.running]
    if not running:
        obj.deleteLater()
        return

    def check() -> None:
        if not any(t.running for t in running):
            obj.deleteLater()

    for task in running:
        task.done.connect(check)
