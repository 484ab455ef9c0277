"""The Train page's live charts (pyqtgraph): loss, learning rate, throughput, memory per device.

A view over :class:`~gui.chart_data.ChartData`: the page extends the data as events arrive and
says which series changed; the charts redraw those at most every :data:`REDRAW_MS` (many events
in a burst cost one redraw), and not at all while hidden. Curves take numpy views with
``clipToView`` and automatic peak downsampling, so a history of a million steps draws as fast as
a short one.

Memory: one chart per GPU with NVML's used and total (every process on the device) beside the
trainer's torch allocated, reserved and peak; on a CPU-only machine one chart of the training
process's resident memory against the machine's RAM, titled as such. Figures in GiB.

pyqtgraph takes a second or more to import (it walks every Qt enum): the page imports this
module only once it shows charts (see :func:`gui.pages.train.charts_module`).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from appliance.training.progress import HOST_LABEL
from gui.chart_data import ChartData, Columns

REDRAW_MS = 250
"""A chart is redrawn at most about four times a second, however fast events arrive."""
STAGGER_MS = 40
"""Between the redraws of two charts: the event loop runs in between (a chart's repaint costs
tens of ms on a slow CPU with software rendering)."""
UNITS = ("loss", "lr", "tps", "memory")
"""What is redrawn in one piece."""
GIB = float(2**30)
X_AXES = {"step": "step", "epoch": "epoch"}
GPU_CURVES = ("used", "total", "allocated", "reserved", "peak")
HOST_CURVES = ("rss", "ram_total")
_INK = "#202020"
_LEGEND_BRUSH = (255, 255, 255, 170)
_TOTALS = ("total", "ram_total")
_PENS = {
    "loss": pg.mkPen((140, 170, 215), width=1),
    "smoothed": pg.mkPen((25, 85, 190), width=2),
    "eval": pg.mkPen((215, 95, 20), width=2),
    "lr": pg.mkPen((60, 140, 60), width=2),
    "tokens_per_s": pg.mkPen((130, 60, 160), width=2),
    "used": pg.mkPen((200, 40, 40), width=2),
    "total": pg.mkPen((110, 110, 110), width=1, style=Qt.PenStyle.DashLine),
    "allocated": pg.mkPen((25, 85, 190), width=2),
    "reserved": pg.mkPen((120, 160, 230), width=1),
    "peak": pg.mkPen((25, 85, 190), width=1, style=Qt.PenStyle.DotLine),
    "rss": pg.mkPen((200, 40, 40), width=2),
    "ram_total": pg.mkPen((110, 110, 110), width=1, style=Qt.PenStyle.DashLine),
}
_LABELS = {
    "loss": "train loss",
    "smoothed": "smoothed",
    "eval": "eval loss",
    "used": "used (NVML, all processes)",
    "total": "total",
    "allocated": "torch allocated",
    "reserved": "torch reserved",
    "peak": "torch peak",
    "rss": "training process RSS",
    "ram_total": "total RAM",
}


def _plot(title: str, y_label: str, *, time_axis: bool = False) -> pg.PlotWidget:
    axes = {"bottom": pg.DateAxisItem()} if time_axis else {}
    widget = pg.PlotWidget(background="w", axisItems=axes)
    item = widget.getPlotItem()
    item.setTitle(title, color=_INK, size="9pt")
    for name in ("left", "bottom"):
        axis = item.getAxis(name)
        axis.setPen(_INK)
        axis.setTextPen(_INK)
    item.setLabel("left", y_label, color=_INK)
    item.setMenuEnabled(False)
    widget.setMinimumSize(220, 150)
    return widget


def _curve(plot: pg.PlotWidget, key: str, **style: object) -> pg.PlotDataItem:
    curve = plot.plot(pen=_PENS[key], name=_LABELS.get(key, key), **style)
    curve.setClipToView(True)
    curve.setDownsampling(auto=True, method="peak")
    return curve


class MemoryChart:
    """One device's memory chart: a GPU's (NVML and torch) or the training process's RSS."""

    def __init__(self, title: str, keys: tuple[str, ...]) -> None:
        self.title = title
        self.keys = keys
        self.widget = _plot(title, "GiB", time_axis=True)
        self.widget.addLegend(offset=(-4, 4), labelTextColor=_INK, brush=_LEGEND_BRUSH)
        self.curves = {key: _curve(self.widget, key) for key in keys}
        self.widget.getPlotItem().enableAutoRange(axis="y", enable=False)

    def draw(self, columns: Columns) -> None:
        x = columns["time"]
        top = 0.0
        for key, curve in self.curves.items():
            y = columns[key] / GIB
            curve.setData(x, y, connect="finite")
            if key not in _TOTALS and np.isfinite(y).any():
                top = max(top, float(np.nanmax(y)))
        # A device's total dwarfs a small run's use: the axis shows the use, and reaches up to
        # the total only once the use is at least half of it (the title says the total).
        total = self.total(columns)
        if total is not None and top >= 0.5 * total:
            top = total
        if top > 0:
            self.widget.getPlotItem().setYRange(0, top * 1.08, padding=0)

    def total(self, columns: Columns) -> float | None:
        """The device's (or the machine's) memory in GiB, from the latest reading."""
        for key in _TOTALS:
            if key in self.keys:
                found = columns[key][np.isfinite(columns[key])]
                return float(found[-1]) / GIB if len(found) else None
        return None


class RunCharts(QWidget):
    """Loss (raw, smoothed, eval), learning rate, tokens/s and memory charts of one run."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data = ChartData()
        self.x_axis = "step"
        self._dirty: set[str] = set()
        self._timer = QTimer(self)
        self._timer.setObjectName("chartsRedraw")
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._draw_next)

        self.x_choice = QComboBox()
        self.x_choice.addItems(list(X_AXES))
        self.x_choice.currentTextChanged.connect(self.set_x_axis)
        self.log_scale = QCheckBox("log scale")
        self.log_scale.setToolTip("Show the loss on a logarithmic axis.")
        self.log_scale.toggled.connect(self.set_log_scale)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("x-axis:"))
        controls.addWidget(self.x_choice)
        controls.addWidget(self.log_scale)
        controls.addStretch(1)

        self.loss_plot = _plot("Loss", "loss")
        self.loss_plot.addLegend(offset=(-4, 4), labelTextColor=_INK, brush=_LEGEND_BRUSH)
        self.loss_curve = _curve(self.loss_plot, "loss")
        self.smoothed_curve = _curve(self.loss_plot, "smoothed")
        self.eval_curve = _curve(
            self.loss_plot, "eval", symbol="o", symbolSize=6, symbolBrush=(215, 95, 20)
        )
        self.lr_plot = _plot("Learning rate", "lr")
        self.lr_curve = _curve(self.lr_plot, "lr")
        self.tps_plot = _plot("Throughput", "tokens/s")
        self.tps_curve = _curve(self.tps_plot, "tokens_per_s")

        self.memory_box = QVBoxLayout()
        self.memory_box.setSpacing(4)
        self.memory_hint = QLabel("Memory readings appear here once the run trains.")
        self.memory_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.memory_hint.setWordWrap(True)
        self.memory_box.addWidget(self.memory_hint)
        self.memory: dict[str, MemoryChart] = {}

        grid = QGridLayout()
        grid.setSpacing(6)
        grid.addWidget(self.loss_plot, 0, 0)
        grid.addLayout(self.memory_box, 0, 1)
        grid.addWidget(self.lr_plot, 1, 0)
        grid.addWidget(self.tps_plot, 1, 1)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(controls)
        layout.addLayout(grid, 1)

    # -- feeding -----------------------------------------------------------------------------------

    def show_data(self, data: ChartData) -> None:
        """Draw ``data`` (a new run, or a replay) in place of what is shown."""
        self.data = data
        self.changed({"all"})  # the memory charts of devices still there are kept and reused

    def changed(self, names: set[str]) -> None:
        """The series ``names`` grew: redraw their charts soon (coalesced)."""
        units = _units(names)
        if not units:
            return
        self._dirty |= units
        if not self._timer.isActive():
            self._timer.start(REDRAW_MS)

    @Slot()
    def _draw_next(self) -> None:
        # One chart per turn of the event loop: each repaint is its own short piece of work,
        # rather than six charts painted in one long one.
        if not self.isVisible():
            return  # drawn when shown again (showEvent)
        unit = next((u for u in UNITS if u in self._dirty), None)
        if unit is not None:
            self._dirty.discard(unit)
            self._draw(unit)
        if self._dirty:
            self._timer.start(STAGGER_MS)

    @Slot()
    def flush(self, force: bool = False) -> None:
        """Redraw every changed chart now (while hidden only when ``force``d)."""
        if not (force or self.isVisible()):
            return
        self._timer.stop()
        dirty, self._dirty = self._dirty, set()
        for unit in UNITS:
            if unit in dirty:
                self._draw(unit)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._dirty:
            self._timer.start(0)

    # -- controls ----------------------------------------------------------------------------------

    @Slot(str)
    def set_x_axis(self, name: str) -> None:
        """Plot loss, learning rate and throughput against ``step`` or ``epoch``."""
        self.x_axis = X_AXES[name]
        if self.x_choice.currentText() != name:
            self.x_choice.setCurrentText(name)
        for plot in (self.loss_plot, self.lr_plot, self.tps_plot):
            plot.getPlotItem().setLabel("bottom", name, color=_INK)
        self.changed({"steps", "evals"})
        self.flush()

    @Slot(bool)
    def set_log_scale(self, on: bool) -> None:
        self.loss_plot.getPlotItem().setLogMode(y=on)
        if self.log_scale.isChecked() != on:
            self.log_scale.setChecked(on)

    # -- drawing -----------------------------------------------------------------------------------

    def _draw(self, unit: str) -> None:
        steps, evals = self.data.steps, self.data.evals
        x = steps[self.x_axis]
        if unit == "loss":
            self.loss_curve.setData(x, steps["loss"], connect="finite")
            self.smoothed_curve.setData(x, steps["smoothed"], connect="finite")
            self.eval_curve.setData(evals[self.x_axis], evals["eval_loss"], connect="finite")
        elif unit == "lr":
            self.lr_curve.setData(x, steps["lr"], connect="finite")
        elif unit == "tps":
            self.tps_curve.setData(x, steps["tokens_per_s"], connect="finite")
        else:
            self._draw_memory()

    def _draw_memory(self) -> None:
        wanted: dict[str, tuple[str, tuple[str, ...], Columns]] = {}
        for index, columns in sorted(self.data.gpus.items()):
            label = self.data.gpu_labels.get(index, f"GPU {index}")
            wanted[f"gpu:{index}"] = (
                f"{label}: memory{_of(columns, 'total')}",
                GPU_CURVES,
                columns,
            )
        if not wanted and len(self.data.host):
            title = f"{HOST_LABEL}{_of(self.data.host, 'ram_total')}"
            wanted["host"] = (title, HOST_CURVES, self.data.host)
        for key, (title, keys, columns) in wanted.items():
            chart = self.memory.get(key)
            if chart is None:
                chart = self.memory[key] = MemoryChart(title, keys)
                self.memory_box.addWidget(chart.widget, 1)
            if chart.title != title:
                chart.title = title
                chart.widget.getPlotItem().setTitle(title, color=_INK, size="9pt")
            chart.draw(columns)
        for key in set(self.memory) - set(wanted):
            chart = self.memory.pop(key)
            self.memory_box.removeWidget(chart.widget)
            chart.widget.deleteLater()
        self.memory_hint.setVisible(not self.memory)

    # -- reading back (tests, screenshots) -------------------------------------------------------

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The full data of a curve: ``loss``, ``smoothed``, ``eval``, ``lr``, ``tokens_per_s``,
        or ``<chart>.<curve>`` for memory (``gpu:0.used``, ``host.rss``)."""
        self.flush(force=True)
        curves = {
            "loss": self.loss_curve,
            "smoothed": self.smoothed_curve,
            "eval": self.eval_curve,
            "lr": self.lr_curve,
            "tokens_per_s": self.tps_curve,
        }
        if name in curves:
            curve = curves[name]
        else:
            chart, _, key = name.rpartition(".")
            curve = self.memory[chart].curves[key]
        x, y = curve.xData, curve.yData
        empty = np.array([])
        return (empty, empty) if x is None or y is None else (np.asarray(x), np.asarray(y))

    def memory_titles(self) -> list[str]:
        self.flush(force=True)
        return [chart.title for chart in self.memory.values()]


def _units(names: set[str]) -> set[str]:
    """The charts to redraw when the series ``names`` changed."""
    if "all" in names:
        return set(UNITS)
    units = set()
    if "steps" in names:
        units |= {"loss", "lr", "tps"}
    if "evals" in names:
        units.add("loss")
    if any(n.startswith("gpu:") or n == "host" for n in names):
        units.add("memory")
    return units


def _of(columns: Columns, key: str) -> str:
    """`` (of 140.4 GiB)`` for a chart's title, from the latest total."""
    found = columns[key][np.isfinite(columns[key])]
    return f" (GiB; total {found[-1] / GIB:,.1f})" if len(found) else " (GiB)"
