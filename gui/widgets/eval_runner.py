"""Run an evaluation from a page: dataset version, split, Evaluate, progress, Cancel, figures.

The versions to score are set by the owner (the Playground's adapters A and B, or the version
selected in the Registry); their base model is scored beside them, as ``appliance eval`` does.
The figures are stored in the registry by the job, against each version. Locking the window
ends a running evaluation: its child holds decrypted adapters and the dataset's rows, which
must not outlive the key in the window (it stores nothing when cancelled).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from appliance.unlocked import UnlockedWorkspace
from gui.evaluation import EvalRun
from gui.style import ERROR_STYLE
from gui.tasks import Task
from gui.widgets.figures_table import FiguresTable, Line

SPLITS = (
    ("eval", "eval rows (held out by training)"),
    ("all", "all rows"),
    ("train", "training rows"),
)


class EvalRunner(QGroupBox):
    """Scores the target versions on a dataset version with an ``eval`` job."""

    evaluated = Signal(object)
    """The job's result data, once stored."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__("Evaluate", parent)
        self.workspace = workspace
        self.targets: list[str] = []
        self.run: EvalRun | None = None
        self._locking = False
        self._after_lock: tuple[str, bool] | None = None
        """What to say once unlocked about a run that ended while locked (words, error)."""
        grid = QGridLayout(self)
        grid.addWidget(QLabel("Dataset:"), 0, 0)
        self.dataset_box = QComboBox()
        self.dataset_box.setObjectName("evalDataset")
        self.dataset_box.setMinimumContentsLength(12)
        grid.addWidget(self.dataset_box, 0, 1)
        grid.addWidget(QLabel("Rows:"), 1, 0)
        self.split_box = QComboBox()
        for split, words in SPLITS:
            self.split_box.addItem(words, split)
        grid.addWidget(self.split_box, 1, 1)
        buttons = QHBoxLayout()
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setObjectName("evaluate")
        self.evaluate_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        buttons.addWidget(self.evaluate_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        grid.addLayout(buttons, 2, 0, 1, 2)
        self.progress = QProgressBar()
        self.progress.hide()
        grid.addWidget(self.progress, 3, 0, 1, 2)
        self.status = QLabel()
        self.status.setObjectName("evalStatus")
        self.status.setWordWrap(True)
        grid.addWidget(self.status, 4, 0, 1, 2)
        self.table = FiguresTable(["model"])
        self.table.setObjectName("evalFigures")
        self.table.setMinimumHeight(90)
        self.table.hide()
        grid.addWidget(self.table, 5, 0, 1, 2)
        grid.setColumnStretch(1, 1)
        self.set_targets([])
        self.refresh()

    # -- what to score ----------------------------------------------------------------------

    @property
    def unlocked(self) -> bool:
        return self.workspace is not None and not self.workspace.locked and not self._locking

    def set_targets(self, refs: list[str]) -> None:
        """The adapter versions the next evaluation scores (their base is scored too)."""
        self.targets = list(dict.fromkeys(r for r in refs if r))
        self._update_button()
        names = " and ".join(self.targets) or "no adapter chosen"
        self.evaluate_button.setToolTip(f"Score {names} and their base model on the dataset")

    def refresh(self) -> None:
        """List the workspace's datasets of conversations (newest version first)."""
        current = self.dataset_box.currentText()
        self.dataset_box.clear()
        if not self.unlocked:
            return
        assert self.workspace is not None
        with self.workspace.registry() as reg:
            versions = [v for v in reg.datasets.versions() if v["kind"] == "chat"]
        versions.sort(key=lambda v: (v["name"], -int(v["version"])))
        self.dataset_box.addItems([f"{v['name']}@{v['version']}" for v in versions])
        if current:
            self.dataset_box.setCurrentText(current)
        self._update_button()

    def _update_button(self) -> None:
        idle = self.run is None or not self.run.running
        self.evaluate_button.setEnabled(
            idle and bool(self.targets) and self.dataset_box.count() > 0
        )

    # -- running ----------------------------------------------------------------------------

    @Slot()
    def start(self) -> EvalRun | None:
        """Start scoring the targets on the chosen dataset version (None: refused, said why)."""
        if self.run is not None and self.run.running:
            return None
        if not self.unlocked or not self.targets or not self.dataset_box.currentText():
            self._say("Choose an adapter and a dataset to evaluate on.", error=True)
            return None
        assert self.workspace is not None
        dataset = self.dataset_box.currentText()
        split = str(self.split_box.currentData())
        run = EvalRun(self.workspace, self.targets, dataset, split=split, parent=self)
        run.progress.connect(self._progress)
        run.succeeded.connect(self._succeeded)
        run.failed.connect(self._failed)
        run.done.connect(self._update_button)
        self.run = run
        self.table.hide()
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.show()
        self.cancel_button.setEnabled(True)
        self._say(f"Evaluating {', '.join(self.targets)} on {dataset}…")
        run.start()
        self._update_button()
        return run

    @Slot()
    def cancel(self) -> None:
        if self.run is not None and self.run.running:
            self.cancel_button.setEnabled(False)
            self._say("Cancelling the evaluation…")
            self.run.cancel()

    def vault_tasks(self) -> list[Task]:
        """The request being prepared (it unwraps data keys with the master key)."""
        task = self.run.task if self.run is not None else None
        return [task] if task is not None and task.running else []

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.running

    def on_lock(self) -> None:
        """Forget the figures shown and end a running evaluation (its child holds keys)."""
        self._locking = True
        self.cancel()
        self.table.setRowCount(0)
        self.table.hide()
        self.dataset_box.clear()
        self.status.clear()

    def on_unlock(self) -> None:
        self._locking = False
        self.refresh()
        if self._after_lock is not None:
            words, error = self._after_lock
            self._after_lock = None
            self._say(words, error=error)

    def shutdown(self, wait_s: float = 15.0) -> None:
        """End a running evaluation and wait for its child (the window is closing)."""
        run = self.run
        if run is not None and run.running:
            run.cancel()
            if run.job is not None:
                run.job.child.wait(wait_s)

    @Slot(int, int, str)
    def _progress(self, done: int, total: int, words: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        else:
            self.progress.setRange(0, 0)
        if self.unlocked and not (self.run is not None and self.run.cancelled):
            self._say(f"{words}…")

    def _finish(self) -> None:
        self.progress.hide()
        self.cancel_button.hide()

    @Slot(object)
    def _succeeded(self, result: dict[str, Any]) -> None:
        self._finish()
        if not self.unlocked:
            # It ended before the lock's cancel reached it: stored, shown from the registry.
            self._after_lock = ("The evaluation finished as the workspace was locked.", False)
            return
        self.show_result(result)
        self.evaluated.emit(result)

    def show_result(self, result: dict[str, Any]) -> None:
        lines: list[Line] = []
        if result.get("base") is not None:
            lines.append(([f"base ({result.get('base_model', '')})"], result["base"]))
        lines.extend(([a["ref"]], a["metrics"]) for a in result.get("adapters", []))
        self.table.show_lines(lines)
        self.table.show()
        notes = "".join(f" Note: {n}." for n in result.get("notes", []))
        self._say(
            f"Scored on {result['dataset']['ref']} ({result['split']}: {result['rows']} rows, "
            f"{result['reference_rows']} with a short reference answer; "
            f"{result['settings']['precision']}, {result['seconds']:.0f} s). Stored in the "
            f"registry.{notes}"
        )

    @Slot(str)
    def _failed(self, message: str) -> None:
        self._finish()
        if not self.unlocked:
            self._after_lock = (
                (
                    "The evaluation was ended when the workspace was locked; nothing was stored.",
                    False,
                )
                if message == "cancelled"
                else (f"Evaluation failed: {message}", True)
            )
            return
        if message == "cancelled":
            self._say("Evaluation cancelled; nothing was stored.")
        else:
            self._say(f"Evaluation failed: {message}", error=True)

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status.setText(text)
