"""One ``eval`` job from the desktop app: prepared off the GUI thread, run in a child process.

Preparing the request checks the adapters, the base model and the dataset against the registry
(it hashes the adapter files) and unwraps the data keys the child needs: a light
:class:`~gui.tasks.Task`. The scoring itself is an ``eval`` job (:mod:`appliance.evaluation.job`)
through :class:`~gui.process.JobProcess`; it stores its results in the registry, so a window
locked meanwhile loses nothing. Cancel works in both phases.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from appliance.evaluation.request import eval_request
from appliance.jobs.events import JobProgress
from appliance.progress import Progress, eval_stage_words
from appliance.unlocked import UnlockedWorkspace
from gui.process import JobProcess
from gui.tasks import Task

EVAL_HANG_S = 900.0
"""Loading a large model and scoring its first batch can be silent for minutes."""
CANCEL_GRACE_S = 10.0


class EvalRun(QObject):
    """Score adapter versions ``refs`` (and their base when ``base``) on ``dataset``."""

    progress = Signal(int, int, str)
    """done, total (0: unknown), what is happening in words."""
    succeeded = Signal(object)
    """The job's result data (figures of the base and of each adapter, stored ids)."""
    failed = Signal(str)
    """Why it failed, in one line; ``cancelled`` after :meth:`cancel`."""
    done = Signal()

    def __init__(
        self,
        workspace: UnlockedWorkspace,
        refs: list[str],
        dataset: str,
        *,
        split: str = "eval",
        base: bool = True,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.refs = list(refs)
        self.dataset = dataset
        self.split = split
        self.base = base
        self.task: Task | None = None
        self.job: JobProcess | None = None
        self.cancelled = False
        self.running = False
        self.result: dict[str, Any] | None = None

    def start(self) -> None:
        workspace, refs, dataset, split, base = (
            self.workspace,
            self.refs,
            self.dataset,
            self.split,
            self.base,
        )

        def work(_progress: Progress) -> Any:
            with workspace.registry() as reg:
                request, _ = eval_request(
                    workspace.vault, reg, refs, dataset, split=split, base=base
                )
            return request

        self.running = True
        self.progress.emit(0, 0, eval_stage_words("checking"))
        self.task = Task("preparing an evaluation", work, self)
        self.task.succeeded.connect(self._prepared)
        self.task.failed.connect(self._end_failed)
        self.task.start()

    def cancel(self) -> None:
        """Stop: before the child starts nothing runs; the child is asked to stop (SIGTERM)."""
        if not self.running:
            return
        self.cancelled = True
        if self.job is not None:
            self.job.cancel(CANCEL_GRACE_S)

    @Slot(object)
    def _prepared(self, request: Any) -> None:
        if self.cancelled:
            self._end_failed("cancelled")
            return
        self.job = JobProcess(request, hang_s=EVAL_HANG_S, parent=self)
        self.job.child.event_received.connect(self._on_event)
        self.job.succeeded.connect(self._succeeded)
        self.job.failed.connect(self._end_failed)
        self.job.start()

    @Slot(object)
    def _on_event(self, event: object) -> None:
        if not isinstance(event, JobProgress):
            return
        self.progress.emit(event.done, event.total, eval_stage_words(event.stage, event.message))

    @Slot(object)
    def _succeeded(self, result: dict[str, Any]) -> None:
        self.running = False
        self.result = result
        self.succeeded.emit(result)
        self.done.emit()

    @Slot(str)
    def _end_failed(self, message: str) -> None:
        self.running = False
        self.failed.emit("cancelled" if self.cancelled else message)
        self.done.emit()
