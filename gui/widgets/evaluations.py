"""Evaluation results in the Registry: one version's (with Evaluate and Promote), or several.

:class:`EvaluationsPanel` belongs under the lineage of the adapter version selected in the
Registry page: its stored evaluations (the adapter's figures and its base model's beside them,
the golden set's rows in bold), the golden set and the version in production, an
:class:`~gui.widgets.eval_runner.EvalRunner` to score it on another dataset version, and the
:class:`~gui.widgets.promotion.PromotePanel`. :class:`EvaluationsCompare` belongs in the
Compare view: the figures of the compared versions on every dataset version they were scored
on. Both read the registry on the GUI thread (milliseconds, as the other pages do). Locking
forgets every figure shown and ends a running evaluation or scoring child.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from appliance.evaluation import gate
from appliance.evaluation.report import compare, history
from appliance.unlocked import UnlockedWorkspace
from gui.tasks import Task
from gui.widgets.eval_runner import EvalRunner
from gui.widgets.figures_table import FiguresTable, Line
from gui.widgets.promotion import PromotePanel

if TYPE_CHECKING:
    from appliance.registry.rows import GoldenSetRow


class EvaluationsPanel(QWidget):
    """The evaluations of one adapter version, scoring it, and promoting it."""

    changed = Signal()
    """An evaluation was stored or the production tag moved (the owner may refresh)."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.ref: str | None = None
        self.live = True
        self._locking = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.heading = QLabel()
        font = self.heading.font()
        font.setBold(True)
        self.heading.setFont(font)
        layout.addWidget(self.heading)
        self.golden = QLabel()
        self.golden.setObjectName("goldenSet")
        self.golden.setWordWrap(True)
        self.golden.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.golden)
        self.table = FiguresTable(["dataset (rows)", "model", "when"])
        self.table.setObjectName("evaluations")
        self.table.setMinimumHeight(100)
        layout.addWidget(self.table, 1)
        # Side by side: under a lineage, height is what the page lacks, not width.
        actions = QHBoxLayout()
        self.runner = EvalRunner(workspace)
        self.runner.evaluated.connect(self._evaluated)
        actions.addWidget(self.runner, 3)
        promote_box = QGroupBox("Promote")
        promote_layout = QVBoxLayout(promote_box)
        self.promote = PromotePanel(workspace)
        self.promote.promoted.connect(self._promoted)
        self.promote.scored.connect(self._stored)
        promote_layout.addWidget(self.promote)
        promote_layout.addStretch(1)
        actions.addWidget(promote_box, 2)
        layout.addLayout(actions)
        self.show_version(None)

    @property
    def unlocked(self) -> bool:
        return self.workspace is not None and not self.workspace.locked and not self._locking

    def show_version(self, ref: str | None, *, live: bool = True) -> None:
        """Show adapter version ``ref`` (``NAME@N``; None: nothing selected).

        Args:
            ref: the version.
            live: False for a deleted version: its evaluations stay readable, but without
                weights it can be neither scored nor promoted.
        """
        self.ref = ref
        self.live = live
        usable = ref if live else None
        self.runner.set_targets([usable] if usable else [])
        self.promote.set_version(usable)
        self.refresh()

    @Slot()
    def refresh(self) -> None:
        self.table.setRowCount(0)
        if self.ref is None or not self.unlocked:
            self.heading.setText("Evaluations" if self.ref is None else "")
            self.golden.clear()
            return
        assert self.workspace is not None
        with self.workspace.registry() as reg:
            adapter = reg.adapters.version(self.ref, include_deleted=True)
            rows = history(reg, self.ref)
            golden = reg.golden_sets.get(adapter["name"])
            check = gate.check(reg, self.ref) if self.live else None
        self.heading.setText(f"Evaluations of {adapter['ref']}")
        self.golden.setText(_golden_words(adapter["name"], golden, check))
        lines: list[Line] = []
        bold: set[int] = set()
        for row in rows:
            where = f"{row.where} ({row.rows})"
            if row.golden:
                bold.update({len(lines), len(lines) + 1})
                where += " · golden set"
            lines.append(([where, row.adapter, row.when], row.metrics))
            if row.base_metrics is not None:
                lines.append(([where, "base model", row.when], row.base_metrics))
        self.table.show_lines(lines, bold=bold)
        if not lines:
            words = "No evaluation yet: score it below." if self.live else "No evaluation recorded."
            self.table.show_lines([([words, "", ""], None)])

    @Slot(object)
    def _evaluated(self, _result: object) -> None:
        self.refresh()
        self.changed.emit()

    @Slot(object)
    def _promoted(self, _moved: object) -> None:
        self.refresh()
        self.changed.emit()

    @Slot()
    def _stored(self) -> None:
        self.refresh()
        self.changed.emit()

    def vault_tasks(self) -> list[Task]:
        return self.runner.vault_tasks() + self.promote.vault_tasks()

    def on_lock(self) -> None:
        """Forget the figures shown and end a running evaluation or scoring child."""
        self._locking = True
        self.refresh()
        self.runner.on_lock()
        self.promote.on_lock()

    def shutdown(self) -> None:
        """End the children this panel started (the window is closing)."""
        self.runner.shutdown()
        self.promote.shutdown()

    def on_unlock(self) -> None:
        self._locking = False
        self.runner.on_unlock()
        self.promote.on_unlock()
        self.refresh()


def _golden_words(name: str, golden: GoldenSetRow | None, check: gate.GateCheck | None) -> str:
    if golden is None:
        return (
            f"{name} has no golden set, so its production tag is not gated (attach one with "
            f"'appliance adapter golden {name} --dataset D@V')."
        )
    metric = "contains-match" if golden["metric"] == "contains" else "answer loss"
    if check is None:  # a deleted version: never promoted again
        return f"Golden set {golden['dataset']} of {name}; this version is deleted."
    production = f"; in production: {check.production}" if check.production else ""
    if check.already:
        production = "; this version is in production"
    deleted = " (deleted: no promotion until another is attached)" if golden["deleted_at"] else ""
    return f"Golden set {golden['dataset']}{deleted}, gate on {metric}{production}."


class EvaluationsCompare(QWidget):
    """The figures of several adapter versions on the dataset versions they were scored on."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.refs: list[str] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        self.table = FiguresTable(["dataset", "model"])
        self.table.setObjectName("compareEvaluations")
        layout.addWidget(self.table, 1)

    def compare(self, refs: list[str]) -> None:
        """Show ``refs`` side by side (an empty list clears the table, e.g. on lock)."""
        self.refs = list(refs)
        self.table.setRowCount(0)
        if not refs or self.workspace is None or self.workspace.locked:
            self.caption.clear()
            return
        with self.workspace.registry() as reg:
            found = compare(reg, refs)
        lines: list[Line] = []
        for comparison in found:
            where = f"{comparison.dataset} ({comparison.split})"
            if not comparison.comparable:
                where += " · settings differ"
            for ref, evaluation in comparison.by_version.items():
                lines.append(([where, ref], evaluation.metrics if evaluation else None))
            lines.append(([where, "base model"], comparison.base))
        self.table.show_lines(lines)
        self.caption.setText(
            "Answer loss and contains-match of each version on the same rows (lower loss is "
            "better; '-' where a version was not scored there)."
            if lines
            else "None of these versions has been evaluated yet."
        )
