"""Every run of the workspace with its state; choosing one shows it in the Train page's charts."""

from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from appliance.training.overview import RunSummary
from gui.style import ERROR_COLOUR

COLUMNS = ("Run", "State", "Model", "Dataset", "Adapter", "Created", "Message")
STATE_COLOURS = {
    "running": "#1565c0",
    "finished": "#2e7d32",
    "stopped": "#8d6e00",
    "failed": ERROR_COLOUR,
    "lost": ERROR_COLOUR,
    "queued": "#555555",
}


class RunsTable(QTableWidget):
    """Runs, newest first: id, state (coloured), model, dataset, adapter, created, message."""

    run_chosen = Signal(str)
    """The person selected the run with this id."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setObjectName("runsTable")
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().hide()
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.summaries: list[RunSummary] = []
        self.itemSelectionChanged.connect(self._selected)
        self._filling = False

    def show_runs(self, summaries: list[RunSummary], keep: str | None = None) -> None:
        """List ``summaries``; keep run ``keep`` selected (without announcing it again)."""
        self._filling = True
        self.summaries = summaries
        self.setRowCount(len(summaries))
        for row, run in enumerate(summaries):
            cells = (
                run.run_id,
                run.state,
                run.model,
                run.dataset,
                ", ".join(run.adapters) or "-",
                run.created[:19].replace("T", " "),
                run.message,
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column == 1:
                    item.setForeground(QColor(STATE_COLOURS.get(run.state, "#000000")))
                if column == 6 and text:
                    item.setToolTip(text)
                self.setItem(row, column, item)
        self.clearSelection()
        if keep is not None:
            self.select(keep)
        self._filling = False

    def select(self, run_id: str) -> None:
        for row, run in enumerate(self.summaries):
            if run.run_id == run_id:
                self.selectRow(row)
                return

    def summary(self, run_id: str) -> RunSummary | None:
        return next((r for r in self.summaries if r.run_id == run_id), None)

    def state_of(self, run_id: str) -> str | None:
        """The state the list shows for a run (for tests and the page)."""
        run = self.summary(run_id)
        return run.state if run is not None else None

    @Slot()
    def _selected(self) -> None:
        if self._filling:
            return
        rows = {index.row() for index in self.selectedIndexes()}
        if len(rows) == 1:
            row = rows.pop()
            if 0 <= row < len(self.summaries):
                self.run_chosen.emit(self.summaries[row].run_id)
