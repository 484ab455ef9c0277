"""Background work for the GUI: anything slower than ~50 ms runs here, never on the GUI thread.

A :class:`Task` runs one callable on Qt's global thread pool and reports through signals, which
Qt delivers on the GUI thread. The callable receives a ``progress(done, total, stage)`` function
to call as it goes; errors become a one-line message, as in the CLI.
"""

from __future__ import annotations

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

    def __init__(
        self, name: str, fn: Callable[[Progress], Any], parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.name = name
        self._fn = fn
        self.running = False
        self.result: Any = None
        self.error: str | None = None

    def start(self, pool: QThreadPool | None = None) -> None:
        self.running = True
        (pool or QThreadPool.globalInstance()).start(_Runner(self))

    def _report_progress(self, done: int, total: int, stage: str) -> None:
        self.progress.emit(int(done), int(total), stage)

    def _finish(self, result: Any, error: str | None) -> None:
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
        try:
            result = task._fn(task._report_progress)
        except ApplianceError as exc:
            task._finish(None, str(exc))
        except Exception as exc:
            traceback.print_exc()
            task._finish(None, f"internal error in {task.name}: {type(exc).__name__}: {exc}")
        else:
            task._finish(result, None)
