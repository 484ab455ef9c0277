"""Two or more adapter versions side by side: settings, base and data, metrics, loss curves.

A view of a :class:`~appliance.training.compare.Comparison`. The settings table can show only
the fields that differ (the most useful question when two runs behave differently); the loss
curves of every version are overlaid, train solid and eval dashed with markers, against the
step, the epoch or the tokens seen, so runs on datasets of different sizes line up. Under the
curves, the versions' stored evaluations on the dataset versions they share
(:class:`~gui.widgets.evaluations.EvaluationsCompare`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance.training.compare import Comparison, CurvePoint, ValueRow
from appliance.unlocked import UnlockedWorkspace
from gui.style import ERROR_COLOUR
from gui.widgets.evaluations import EvaluationsCompare
from gui.widgets.lineage_view import metric_text

X_AXES = {"step": "Step", "epoch": "Epoch", "tokens": "Tokens seen"}
"""The x-axis choices: key -> axis label."""
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")
DIFFERS_BACKGROUND = QColor("#fff3c4")


def _x(point: CurvePoint, axis: str) -> float:
    if axis == "epoch":
        return point.epoch
    if axis == "tokens":
        return math.nan if point.tokens_seen is None else float(point.tokens_seen)
    return float(point.step)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


class CompareView(QWidget):
    """Shows a :class:`Comparison`; :attr:`curve_items` holds the plotted curves by
    ``(ref, "train" | "eval")``."""

    def __init__(
        self, workspace: UnlockedWorkspace | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.comparison: Comparison | None = None
        self.curve_items: dict[tuple[str, str], pg.PlotDataItem] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.summary = QLabel("Select two or more versions and press Compare.")
        self.summary.setObjectName("compareSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.summary)

        splitter = QSplitter(Qt.Orientation.Vertical)
        tables = QWidget()
        tables_layout = QHBoxLayout(tables)
        tables_layout.setContentsMargins(0, 0, 0, 0)
        settings = QVBoxLayout()
        self.differences_only = QCheckBox("Settings: differences only")
        self.differences_only.setChecked(True)
        self.differences_only.toggled.connect(self._fill_config)
        settings.addWidget(self.differences_only)
        self.config_table = self._table()
        settings.addWidget(self.config_table, 1)
        tables_layout.addLayout(settings, 1)
        metrics = QVBoxLayout()
        metrics.addWidget(QLabel("Final metrics"))
        self.metrics_table = self._table()
        metrics.addWidget(self.metrics_table, 1)
        tables_layout.addLayout(metrics, 1)
        splitter.addWidget(tables)

        curves = QWidget()
        curves_layout = QVBoxLayout(curves)
        curves_layout.setContentsMargins(0, 0, 0, 0)
        axis_row = QHBoxLayout()
        axis_row.addWidget(QLabel("Loss against:"))
        self.x_axis = QComboBox()
        for key, label in X_AXES.items():
            self.x_axis.addItem(label, key)
        self.x_axis.currentIndexChanged.connect(self._plot)
        axis_row.addWidget(self.x_axis)
        axis_row.addWidget(QLabel("(train solid, eval dashed with points)"))
        axis_row.addStretch(1)
        curves_layout.addLayout(axis_row)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setObjectName("lossPlot")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setLabel("left", "Loss")
        self.plot.addLegend(offset=(-10, 10))
        curves_layout.addWidget(self.plot, 1)
        self.curve_note = QLabel()
        self.curve_note.setWordWrap(True)
        self.curve_note.setStyleSheet("color: #555;")
        curves_layout.addWidget(self.curve_note)
        splitter.addWidget(curves)
        self.evaluations = EvaluationsCompare(workspace)
        splitter.addWidget(self.evaluations)
        splitter.setChildrenCollapsible(False)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        splitter.setStretchFactor(2, 2)
        splitter.setSizes([300, 400, 300])
        layout.addWidget(splitter, 1)

    @staticmethod
    def _table() -> QTableWidget:
        table = QTableWidget(0, 0)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setStretchLastSection(True)
        return table

    def clear(self) -> None:
        """Show nothing (the workspace was locked)."""
        self.comparison = None
        self.summary.setText("Select two or more versions and press Compare.")
        for table in (self.config_table, self.metrics_table):
            table.clear()
            table.setRowCount(0)
            table.setColumnCount(0)
        self.plot.clear()
        self.curve_items.clear()
        self.curve_note.clear()
        self.evaluations.compare([])

    def show_comparison(self, comparison: Comparison) -> None:
        self.comparison = comparison
        first = comparison.versions[0]
        base = first.base_model.name if first.base_model else "none"
        data = first.dataset.ref if first.dataset else "none"
        same_base = (
            f"same base model: <b>yes</b> ({base})"
            if comparison.same_base
            else f"same base model: <b style='color:{ERROR_COLOUR}'>no</b>"
        )
        same_data = (
            f"same data: <b>yes</b> ({data})"
            if comparison.same_data
            else f"same data: <b style='color:{ERROR_COLOUR}'>no</b>"
        )
        self.summary.setText(
            f"Comparing {', '.join(comparison.refs)}: {same_base}; {same_data} "
            "<small>(compared by sha256)</small>"
        )
        self._fill_config()
        self._fill(self.metrics_table, comparison.metrics, highlight=True, text=metric_text)
        self._plot()
        self.evaluations.compare(list(comparison.refs))

    def shown_config_keys(self) -> list[str]:
        """The setting names the table shows now (top to bottom)."""
        items = (
            self.config_table.verticalHeaderItem(r) for r in range(self.config_table.rowCount())
        )
        return [item.text() for item in items if item is not None and item.text()]

    @Slot()
    def _fill_config(self) -> None:
        if self.comparison is None:
            return
        rows = (
            self.comparison.config_differences
            if self.differences_only.isChecked()
            else self.comparison.config
        )
        self._fill(self.config_table, rows, highlight=not self.differences_only.isChecked())
        if not rows:
            self.config_table.setRowCount(1)
            self.config_table.setVerticalHeaderItem(0, QTableWidgetItem(""))
            self.config_table.setItem(0, 0, QTableWidgetItem("The settings are identical."))

    def _fill(
        self,
        table: QTableWidget,
        rows: tuple[ValueRow, ...],
        *,
        highlight: bool,
        text: Callable[[str, Any], str] | None = None,
    ) -> None:
        assert self.comparison is not None
        refs = self.comparison.refs
        table.clear()
        table.setColumnCount(len(refs))
        table.setHorizontalHeaderLabels(list(refs))
        table.setRowCount(len(rows))
        bold = QFont()
        bold.setBold(True)
        for r, row in enumerate(rows):
            header = QTableWidgetItem(row.key)
            table.setVerticalHeaderItem(r, header)
            for c, value in enumerate(row.values):
                item = QTableWidgetItem(text(row.key, value) if text else _cell(value))
                if highlight and row.differs:
                    item.setBackground(QBrush(DIFFERS_BACKGROUND))
                    item.setFont(bold)
                table.setItem(r, c, item)
        table.resizeColumnsToContents()

    @Slot()
    def _plot(self) -> None:
        self.plot.clear()
        self.curve_items.clear()
        if self.comparison is None:
            return
        axis = str(self.x_axis.currentData())
        self.plot.setLabel("bottom", X_AXES[axis])
        notes = []
        for i, (version, curves) in enumerate(
            zip(self.comparison.versions, self.comparison.curves, strict=True)
        ):
            color = COLORS[i % len(COLORS)]
            for kind, points in (("train", curves.train), ("eval", curves.eval)):
                pairs = [(_x(p, axis), p.loss) for p in points]
                pairs = [(x, y) for x, y in pairs if not math.isnan(x)]
                if not pairs:
                    continue
                xs, ys = zip(*pairs, strict=True)
                pen = pg.mkPen(
                    color,
                    width=2,
                    style=Qt.PenStyle.SolidLine if kind == "train" else Qt.PenStyle.DashLine,
                )
                item = self.plot.plot(
                    list(xs),
                    list(ys),
                    pen=pen,
                    name=f"{version.ref} {kind}",
                    symbol="o" if kind == "eval" else None,
                    symbolSize=7,
                    symbolBrush=color,
                    symbolPen=color,
                    connect="finite",
                )
                self.curve_items[(version.ref, kind)] = item
            if curves.problem:
                notes.append(f"{version.ref}: {curves.problem}")
            elif axis == "tokens" and any(p.tokens_seen is None for p in curves.train):
                notes.append(f"{version.ref}: the run did not report tokens seen")
        self.curve_note.setText("\n".join(notes))
