"""'Promote to production' for one adapter version, through the golden-set gate.

The same rule as ``appliance adapter tag NAME@N production`` (:mod:`appliance.evaluation.gate`):
with a golden set attached to the adapter's name, the tag moves only to a version no worse on
it than the version in production. Figures that are missing (never computed, or stale because
the golden set moved to a new dataset version) are computed first by an ``eval`` job on the
whole golden set, with progress and Cancel. A refusal shows both figures; the tag can still be
moved with a reason, which goes into the audit log with the OS user (also when the figures
could not be computed). Registry work runs on tasks; the tag moves under the workspace's writer
lock, checked again in its transaction. This is the desktop's only way to put ``production``
through the gate: the Registry page's Tag… dialog hands a gated ``production`` here. Locking
ends a scoring job (its child holds decrypted adapters and rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from appliance.evaluation import gate
from appliance.evaluation.gate import GateCheck
from appliance.progress import Progress
from appliance.unlocked import UnlockedWorkspace
from gui.evaluation import EvalRun
from gui.style import ERROR_STYLE
from gui.tasks import Task

if TYPE_CHECKING:
    from appliance.registry.rows import TagMove


def refusal_words(check: GateCheck) -> str:
    """Why the gate refuses, in the desktop's words (no command-line options)."""
    if check.problem is not None:
        return f"The gate cannot compare: {check.problem}."
    golden = check.golden["dataset"] if check.golden else "?"
    if check.missing:
        return f"No current figures of {', '.join(check.missing)} on golden set {golden}."
    return (
        f"Refused: {check.ref} has {gate.describe_metric(check.metric, check.candidate)} on "
        f"golden set {golden}, worse than {check.production} in production "
        f"({gate.describe_metric(check.metric, check.incumbent)})."
    )


def passing_words(check: GateCheck) -> str:
    """What the gate found when it lets the tag move."""
    if not check.gated:
        return "No golden set is attached to this adapter: the production tag is not gated."
    if check.already:
        return f"{check.ref} is the version in production."
    golden = check.golden["dataset"] if check.golden else "?"
    figures = gate.describe_metric(check.metric, check.candidate)
    if check.production is not None:
        figures += f" vs {check.production} {gate.describe_metric(check.metric, check.incumbent)}"
    return f"Golden set {golden}: {figures}; the gate passes."


class PromotePanel(QWidget):
    """A button that tags the shown version ``production`` if the gate lets it."""

    promoted = Signal(object)
    """``{"ref", "tag", "previous"}`` once the tag moved."""
    scored = Signal()
    """The missing figures were computed and stored (whatever the gate then says)."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.ref: str | None = None
        self.check: GateCheck | None = None
        self.task: Task | None = None
        self.run: EvalRun | None = None
        self._scored = False
        self._locking = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.button = QPushButton("Promote to production")
        self.button.setObjectName("promote")
        self.button.setToolTip(
            "Tag this version production. With a golden set attached, it must do no worse on "
            "it than the version in production."
        )
        self.button.clicked.connect(self.promote)
        row.addWidget(self.button)
        self.progress = QProgressBar()
        self.progress.hide()
        row.addWidget(self.progress, 1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        row.addWidget(self.cancel_button)
        row.addStretch(1)
        layout.addLayout(row)
        self.status = QLabel()
        self.status.setObjectName("promoteStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        override = QHBoxLayout()
        self.reason = QLineEdit()
        self.reason.setObjectName("overrideReason")
        self.reason.setPlaceholderText(
            "reason to promote anyway (recorded in the audit log with your user name)"
        )
        self.reason.returnPressed.connect(self.promote_anyway)
        self.reason.textChanged.connect(self._reason_changed)
        self.override_button = QPushButton("Promote anyway")
        self.override_button.setObjectName("promoteAnyway")
        self.override_button.clicked.connect(self.promote_anyway)
        override.addWidget(self.reason, 1)
        override.addWidget(self.override_button)
        self.override_row = QWidget()
        self.override_row.setLayout(override)
        self.override_row.hide()
        layout.addWidget(self.override_row)
        self.set_version(None)

    @property
    def unlocked(self) -> bool:
        return self.workspace is not None and not self.workspace.locked and not self._locking

    @property
    def busy(self) -> bool:
        return (self.task is not None and self.task.running) or (
            self.run is not None and self.run.running
        )

    def set_version(self, ref: str | None) -> None:
        """The version the button promotes (None: none shown)."""
        if ref != self.ref:
            self.status.clear()
            self.override_row.hide()
            self.reason.clear()
            self.check = None
        self.ref = ref
        self.button.setEnabled(ref is not None and self.unlocked and not self.busy)

    # -- the gate ----------------------------------------------------------------------------

    @Slot()
    def promote(self) -> Task | None:
        """Check the gate (scoring missing figures first), then move the tag if it passes."""
        if self.ref is None or not self.unlocked or self.busy:
            return None
        self._scored = False
        self.override_row.hide()
        self._say(f"Checking the golden-set gate for {self.ref}…")
        return self._check()

    def _check(self) -> Task:
        assert self.workspace is not None
        assert self.ref is not None
        workspace, ref = self.workspace, self.ref

        def work(_progress: Progress) -> GateCheck:
            with workspace.registry() as reg:
                return gate.check(reg, ref)

        return self._start(Task("checking the promotion gate", work, self), self._checked)

    def _start(self, task: Task, on_success: Any) -> Task:
        self.task = task
        task.succeeded.connect(on_success)
        task.failed.connect(self._failed)
        task.done.connect(self._idle)
        self.button.setEnabled(False)
        task.start()
        return task

    @Slot(object)
    def _checked(self, check: GateCheck) -> None:
        if not self.unlocked or check.ref != self.ref:
            return
        self.check = check
        if check.passed:
            self._move(None)
        elif check.missing and check.problem is None and not self._scored:
            self._score(check)
        else:
            self._refused(check)

    def _score(self, check: GateCheck) -> None:
        """Compute the figures the gate lacks (both versions together: the same settings)."""
        assert self.workspace is not None
        assert check.golden is not None
        golden = check.golden["dataset"]
        stale = f" (figures on {', '.join(check.stale)} are stale)" if check.stale else ""
        self._say(f"Scoring {', '.join(check.missing)} on golden set {golden}{stale}…")
        self._scored = True
        run = EvalRun(self.workspace, check.missing, golden, split="all", base=False, parent=self)
        run.progress.connect(self._progress)
        run.succeeded.connect(self._figures_ready)
        run.failed.connect(self._scoring_failed)
        run.done.connect(self._idle)
        self.run = run
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.show()
        self.cancel_button.setEnabled(True)
        self.button.setEnabled(False)
        run.start()

    @Slot(object)
    def _figures_ready(self, _result: object) -> None:
        self.scored.emit()
        if self.unlocked:
            self._check()  # the gate decides on the stored figures, as the CLI's does

    def _refused(self, check: GateCheck) -> None:
        self._say(refusal_words(check), error=True)
        self._offer_override()

    def _offer_override(self) -> None:
        self.override_row.show()
        self._reason_changed(self.reason.text())
        self.reason.setFocus()

    @Slot()
    def promote_anyway(self) -> Task | None:
        """Move the tag although the gate refuses; the reason is audited."""
        reason = self.reason.text().strip()
        if not reason or self.ref is None or not self.unlocked or self.busy:
            return None
        return self._move(reason)

    def _move(self, override: str | None) -> Task:
        assert self.workspace is not None
        assert self.ref is not None
        workspace, ref = self.workspace, self.ref

        def work(_progress: Progress) -> tuple[TagMove, GateCheck]:
            with workspace.ws.writer("adapter tag"), workspace.registry() as reg:
                return gate.promote(reg, ref, override=override)

        return self._start(Task("promoting to production", work, self), self._moved)

    @Slot(object)
    def _moved(self, outcome: tuple[dict[str, Any], GateCheck]) -> None:
        moved, check = outcome
        self.override_row.hide()
        self.reason.clear()
        if self.unlocked:
            was = f" (it was on version {moved['previous']})" if moved["previous"] else ""
            words = passing_words(check) if check.passed else refusal_words(check)
            how = "" if check.passed else " Promoted anyway; the reason is in the audit log."
            self._say(f"{moved['ref']} is now production{was}. {words}{how}")
        self.promoted.emit(moved)

    # -- plumbing ----------------------------------------------------------------------------

    @Slot()
    def cancel(self) -> None:
        if self.run is not None and self.run.running:
            self.cancel_button.setEnabled(False)
            self.run.cancel()

    @Slot(int, int, str)
    def _progress(self, done: int, total: int, words: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        if self.unlocked:
            self._say(f"{words}…")

    @Slot(str)
    def _scoring_failed(self, message: str) -> None:
        if not self.unlocked:
            return
        if message == "cancelled":
            self._say(
                "Scoring cancelled; the tag did not move. Promote again, or anyway with a reason."
            )
        else:
            self._say(
                f"The figures could not be computed: {message}. Promote anyway with a reason?",
                error=True,
            )
        self._offer_override()

    @Slot(str)
    def _failed(self, message: str) -> None:
        if self.unlocked:
            self._say(message, error=True)

    @Slot()
    def _idle(self) -> None:
        if not self.busy:
            self.progress.hide()
            self.cancel_button.hide()
            self.button.setEnabled(self.ref is not None and self.unlocked)

    @Slot(str)
    def _reason_changed(self, text: str) -> None:
        self.override_button.setEnabled(bool(text.strip()))

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status.setText(text)

    def vault_tasks(self) -> list[Task]:
        tasks = [self.task, self.run.task if self.run is not None else None]
        return [t for t in tasks if t is not None and t.running]

    def on_lock(self) -> None:
        """Forget what was shown and end a scoring job (the tag does not move)."""
        self._locking = True
        self.cancel()
        self.check = None
        self.status.clear()
        self.reason.clear()
        self.override_row.hide()
        self.button.setEnabled(False)

    def on_unlock(self) -> None:
        self._locking = False
        self.set_version(self.ref)

    def shutdown(self, wait_s: float = 15.0) -> None:
        """End a scoring job and wait for its child (the window is closing)."""
        run = self.run
        if run is not None and run.running:
            run.cancel()
            if run.job is not None:
                run.job.child.wait(wait_s)
