"""Progress and cancellation of a long dataset operation (an import run by the desktop app).

Progress is reported as everywhere in the core (:data:`appliance.progress.Progress`). A cancel
flag is a :class:`threading.Event` or any callable returning True once the user asked to stop;
it is checked between rows, and a cancelled operation raises :class:`ImportCancelled` having stored
nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from appliance.errors import ApplianceError
from appliance.progress import Progress, no_progress

CancelFlag = threading.Event | Callable[[], bool]


class ImportCancelled(ApplianceError):
    """The user cancelled an import; nothing was stored."""

    exit_code = 130

    def __init__(self, what: str = "the import") -> None:
        super().__init__(f"{what} was cancelled; nothing was stored")


class Control:
    """The progress callback and cancel flag of one operation, with one way to check them."""

    def __init__(self, progress: Progress | None = None, cancel: CancelFlag | None = None) -> None:
        self.report: Progress = progress or no_progress
        self._cancel = cancel

    @property
    def cancelled(self) -> bool:
        if self._cancel is None:
            return False
        if isinstance(self._cancel, threading.Event):
            return self._cancel.is_set()
        return bool(self._cancel())

    def check(self) -> None:
        """Raise :class:`ImportCancelled` if the user asked to stop."""
        if self.cancelled:
            raise ImportCancelled()

    def step(self, done: int, total: int, stage: str) -> None:
        """Report progress, then check for cancellation."""
        self.report(done, total, stage)
        self.check()
