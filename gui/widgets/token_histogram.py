"""Tokens per example as a histogram, with the ``max_seq_length`` cut-off drawn on it.

The bars below the cut-off are what training sees whole; the part of the histogram beyond it
(red) is what ``max_seq_length`` cuts. The caption counts those examples, and the prompt-only
ones whose answer would be cut away entirely (training drops them): the arithmetic is the
core's (:func:`appliance.datasets.token_stats.truncation`), run again as the cut-off moves.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from appliance.datasets.token_stats import TokenStats, Truncation, truncation

BINS = 40
KEPT = (54, 110, 180)
CUT = (200, 40, 40)
FAR_BEYOND = 4
"""A cut-off this many times the longest example is drawn off the chart (all fit)."""


def caption(cut: Truncation, model: str) -> str:
    """The sentence under the histogram."""
    n = cut.examples
    if not n:
        return "No examples."
    text = (
        f"{cut.truncated:,} of {n:,} examples ({cut.truncated_share:.1%}) are longer than "
        f"{cut.max_seq_length:,} tokens and would be cut; "
        f"{cut.answer_lost:,} ({cut.answer_lost_share:.1%}) would lose their whole answer "
        "(the prompt alone fills the limit; training drops them)."
    )
    return f"{text} Counted with the tokenizer and chat template of {model}."


class TokenHistogram(QWidget):
    """The histogram and its caption; :meth:`show_stats` draws, :meth:`clear` forgets."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMinimumHeight(180)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.showGrid(y=True, alpha=0.2)
        item = self.plot.getPlotItem()
        item.setLabel("bottom", "tokens per example")
        item.setLabel("left", "examples")
        for axis in ("bottom", "left"):
            item.getAxis(axis).setPen(pg.mkPen("#666"))
            item.getAxis(axis).setTextPen(pg.mkPen("#333"))
        layout.addWidget(self.plot, 1)
        self.plot.hide()  # shown with statistics: an empty chart reads as "zero examples"
        self.caption = QLabel()
        self.caption.setObjectName("truncationCaption")
        self.caption.setWordWrap(True)
        # Two lines always reserved: a wrapped label's height is not known before it is laid out.
        self.caption.setMinimumHeight(2 * self.caption.fontMetrics().lineSpacing() + 4)
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.caption)
        self.line = pg.InfiniteLine(
            angle=90,
            movable=False,
            pen=pg.mkPen(CUT, width=2, style=Qt.PenStyle.DashLine),
            label="max_seq_length {value:.0f}",
            labelOpts={"position": 0.92, "color": CUT, "fill": (255, 255, 255, 200)},
        )
        self.stats: TokenStats | None = None
        self.truncation: Truncation | None = None
        self.bars: list[pg.BarGraphItem] = []
        self.counts: tuple[list[int], list[int]] = ([], [])
        """Per bin, the examples below and beyond the cut-off (what the bars show)."""

    def clear(self) -> None:
        """Forget the statistics (they describe the data: locking clears them too)."""
        self.stats = None
        self.truncation = None
        self.counts = ([], [])
        self.plot.clear()
        self.plot.hide()
        self.bars = []
        self.caption.clear()

    def show_stats(
        self, stats: TokenStats, max_seq_length: int, split: str | None = None
    ) -> Truncation:
        """Draw ``stats`` (of ``split``: train, eval or None for all) against a cut-off."""
        self.stats = stats
        lengths = np.asarray(stats.lengths_of(split), dtype=np.int64)
        cut = truncation(stats, max_seq_length, split=split)
        self.truncation = cut
        self.plot.clear()
        self.plot.show()
        self.bars = []
        self.caption.setText(caption(cut, stats.model))
        if lengths.size == 0:
            self.counts = ([], [])
            return cut
        longest = int(lengths.max())
        far = max_seq_length > FAR_BEYOND * longest
        top = longest if far else max(longest, max_seq_length)
        edges = np.linspace(0, max(top, 1) * 1.02, BINS + 1)
        kept, _ = np.histogram(lengths[lengths <= max_seq_length], edges)
        beyond, _ = np.histogram(lengths[lengths > max_seq_length], edges)
        self.counts = (kept.tolist(), beyond.tolist())
        centres = (edges[:-1] + edges[1:]) / 2
        width = (edges[1] - edges[0]) * 0.92
        for heights, base, colour in ((kept, None, KEPT), (beyond, kept, CUT)):
            if not heights.any():
                continue
            bar = pg.BarGraphItem(
                x=centres,
                height=heights,
                y0=0 if base is None else base,
                width=width,
                brush=pg.mkBrush(*colour, 200),
                pen=pg.mkPen(*colour),
            )
            self.plot.addItem(bar)
            self.bars.append(bar)
        self.line.setValue(max_seq_length)
        if not far:
            self.plot.addItem(self.line)
        self.plot.setXRange(0, edges[-1], padding=0.02)
        self.plot.setYRange(0, max(int((kept + beyond).max()), 1) * 1.1, padding=0)
        return cut
