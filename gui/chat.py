"""One ``generate`` job driven from the desktop app: a loaded model that answers on request.

:class:`ChatSession` wraps :class:`~gui.process.JobProcess` for the interactive ``generate``
job (:mod:`appliance.generation.protocol`) and turns its output events into signals: the
model is loaded, more adapters were added, a token of an answer, the whole answer, a question
refused. The child keeps the base model (and every adapter loaded so far) in memory between
questions; it ends when :meth:`close` closes its stdin, or at once with :meth:`cancel`.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from appliance.generation.protocol import (
    EVENT_ADDED,
    EVENT_ANSWER,
    EVENT_ERROR,
    EVENT_LOADED,
    EVENT_TOKEN,
    Generate,
    Load,
    Stop,
)
from appliance.jobs import JobRequest
from gui.process import JobProcess

CANCEL_GRACE_S = 5.0


class ChatSession(QObject):
    """A ``generate`` child for base model ``base``.

    Signals arrive on the GUI thread, in the child's order.
    """

    loaded = Signal(object)
    """The ``loaded`` event's data: base model, adapters, device, precision, context length."""
    added = Signal(str, object)
    """Command id, the ``added`` event's data (adapters loaded by a ``load`` command)."""
    token = Signal(str, str)
    """Question id, the next piece of its answer."""
    answered = Signal(str, object)
    """Question id, the ``answer`` event's data (text, finish, token counts, tokens/s)."""
    refused = Signal(str, str)
    """Command id (empty for a line the child could not read), the one-line reason."""
    progress = Signal(int, int, str)
    """Loading stages of the child (``checking``, ``loading``)."""
    ended = Signal(str)
    """The child is gone: empty after :meth:`close`, else why (a failure, ``cancelled``)."""

    def __init__(self, request: JobRequest, base: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.base = base
        self.adapters: set[str] = set(request.params.get("adapters") or [])
        """The adapter references asked for so far (as the caller named them)."""
        self.info: dict[str, Any] = {}
        self.closing = False
        # No watchdog: a chat session waiting for the next question is silent, and rightly so.
        self.job = JobProcess(request, hang_s=None, parent=self)
        self.job.progress.connect(self.progress)
        self.job.output.connect(self._on_output)
        self.job.failed.connect(self._on_failed)
        self.job.succeeded.connect(self._on_succeeded)

    def start(self) -> None:
        self.job.start()

    @property
    def running(self) -> bool:
        return self.job.running

    @property
    def ready(self) -> bool:
        """The model is loaded and the child takes questions."""
        return bool(self.info) and self.running and not self.closing

    @property
    def pid(self) -> int:
        return self.job.child.pid

    def ask(self, question: Generate) -> None:
        self.job.send(question.to_dict())

    def load(self, command: Load) -> None:
        self.adapters.update(command.adapters)
        self.job.send(command.to_dict())

    def stop(self) -> None:
        """End the answer being generated (it arrives with ``finish: stopped``)."""
        if self.running and not self.closing:
            self.job.send(Stop().to_dict())

    def close(self) -> None:
        """Close the child's stdin: it ends after the answer it is generating."""
        if self.running and not self.closing:
            self.closing = True
            self.job.child.close_stdin()

    def cancel(self) -> None:
        """End the child now (SIGTERM, then SIGKILL): for a lock or a closing window."""
        self.closing = True
        self.job.cancel(CANCEL_GRACE_S)

    @Slot(object)
    def _on_output(self, data: dict[str, Any]) -> None:
        event = data.get("event")
        ident = str(data.get("id", ""))
        if event == EVENT_TOKEN:
            self.token.emit(ident, str(data.get("text", "")))
        elif event == EVENT_ANSWER:
            self.answered.emit(ident, data)
        elif event == EVENT_ERROR:
            self.refused.emit(ident, str(data.get("message", "the question was refused")))
        elif event == EVENT_ADDED:
            self.added.emit(ident, data)
        elif event == EVENT_LOADED:
            self.info = dict(data)
            self.loaded.emit(self.info)

    @Slot(object)
    def _on_succeeded(self, _result: object) -> None:
        self.ended.emit("" if self.closing else "the model process ended")

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.ended.emit("" if self.closing and message == "cancelled" else message)
