"""A table of evaluation figures: some leading columns (model, dataset...), then the figures."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from appliance.evaluation.report import FIGURES, figures

Line = tuple[list[str], dict[str, Any] | None]
"""The leading cells of a row, and the metrics of its model (None: not scored)."""


class FiguresTable(QTableWidget):
    """Rows of ``leading`` cells followed by :data:`FIGURES`."""

    def __init__(self, leading: list[str], parent: QWidget | None = None) -> None:
        super().__init__(0, len(leading) + len(FIGURES), parent)
        self.leading = list(leading)
        self.setHorizontalHeaderLabels([*leading, *FIGURES])
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.verticalHeader().hide()
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)

    def show_lines(self, lines: list[Line], *, bold: set[int] | None = None) -> None:
        """Replace the rows; rows numbered in ``bold`` are emphasised (e.g. the golden set)."""
        self.setRowCount(len(lines))
        for r, (cells, metrics) in enumerate(lines):
            values = [*cells, *figures(metrics)]
            for c, text in enumerate(values):
                item = QTableWidgetItem(text)
                if c >= len(self.leading):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                if bold and r in bold:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.setItem(r, c, item)

    def cell(self, row: int, column: str) -> str:
        """The text of ``column`` (a header label) in ``row``."""
        labels = [*self.leading, *FIGURES]
        item = self.item(row, labels.index(column))
        return item.text() if item is not None else ""
