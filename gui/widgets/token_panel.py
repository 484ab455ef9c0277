"""Token statistics of the selected dataset version against a base model the user picks.

The numbers come from the encrypted cache
(:func:`appliance.datasets.token_cache.cached_token_stats`, read on a background task); on a
miss, Count tokens starts the ``token-stats`` job, a child process that loads the model's
tokenizer (transformers never enters this process). The histogram and the truncation
caption then follow the ``max_seq_length`` box as it changes.

A job keeps running through a lock (it holds its own keys); its result is read from the cache
once the window is unlocked again.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from appliance.datasets.token_cache import cached_token_stats, token_stats_request
from appliance.datasets.token_stats import TokenStats
from appliance.demo import DEMO_MODEL_NAME
from appliance.progress import Progress
from appliance.training.config import DataSettings
from appliance.unlocked import UnlockedWorkspace
from gui.process import JobProcess
from gui.tasks import Task

DEFAULT_MAX_SEQ_LENGTH = DataSettings().max_seq_length
"""The cut-off shown first: training's own default, so the histogram answers for a run with
default settings."""
COUNT_HANG_S = 600.0
"""Loading a tokenizer sends no progress (transformers' import alone takes seconds)."""
SPLITS = (("All examples", None), ("Training split", "train"), ("Evaluation split", "eval"))
_STAGES = {
    "decrypting": "Decrypting",
    "loading tokenizer": "Loading the tokenizer",
    "tokenizing": "Tokenizing",
}


class TokenPanel(QWidget):
    """Model picker, cut-off, split, Count tokens, progress, and the histogram."""

    measured = Signal(object)
    """The :class:`TokenStats` now drawn (from the cache or a finished job)."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        # pyqtgraph is imported with the histogram only when a panel is built: it is light
        # (numpy and Qt), but a window without this panel need not pay for it.
        from gui.widgets.token_histogram import TokenHistogram

        super().__init__(parent)
        self.workspace = workspace
        self.dataset_ref: str | None = None
        self.job: JobProcess | None = None
        self.task: Task | None = None
        self._generation = 0
        self.suspended = False
        """Set while the window locks: nothing is read or drawn, even before the key goes."""

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Base model:"))
        self.model_box = QComboBox()
        self.model_box.setObjectName("tokenModel")
        self.model_box.setMinimumContentsLength(22)
        self.model_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model_box.currentIndexChanged.connect(self._selection_changed)
        controls.addWidget(self.model_box)
        controls.addWidget(QLabel("max_seq_length:"))
        self.max_length = QSpinBox()
        self.max_length.setObjectName("maxSeqLength")
        self.max_length.setRange(16, 1_048_576)
        self.max_length.setSingleStep(128)
        self.max_length.setValue(DEFAULT_MAX_SEQ_LENGTH)
        self.max_length.setToolTip("Training's data.max_seq_length, in tokens")
        self.max_length.valueChanged.connect(self._redraw)
        controls.addWidget(self.max_length)
        self.split_box = QComboBox()
        for label, _ in SPLITS:
            self.split_box.addItem(label)
        self.split_box.currentIndexChanged.connect(self._redraw)
        controls.addWidget(self.split_box)
        self.count_button = QPushButton("Count tokens")
        self.count_button.setToolTip(
            "Tokenize every example with the model's tokenizer and chat template, in a "
            "separate process; the result is cached, encrypted"
        )
        self.count_button.clicked.connect(self.count)
        controls.addWidget(self.count_button)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.hide()
        controls.addWidget(self.progress)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        controls.addWidget(self.cancel_button)
        controls.addStretch(1)
        layout.addLayout(controls)
        self.status = QLabel()
        self.status.setObjectName("tokenStatus")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.histogram = TokenHistogram()
        layout.addWidget(self.histogram, 1)
        self.setMinimumHeight(320)
        self._update_buttons()

    # -- what is selected ------------------------------------------------------------------------

    @property
    def model(self) -> str | None:
        text = self.model_box.currentText()
        return text or None

    @property
    def split(self) -> str | None:
        return SPLITS[self.split_box.currentIndex()][1]

    def set_models(self, names: list[str]) -> None:
        """The base models to choose from (the demo model first chosen when present)."""
        current = self.model
        self.model_box.blockSignals(True)
        self.model_box.clear()
        self.model_box.addItems(names)
        preferred = current if current in names else DEMO_MODEL_NAME
        if preferred in names:
            self.model_box.setCurrentText(preferred)
        self.model_box.blockSignals(False)
        self._selection_changed()

    def set_dataset(self, ref: str | None) -> None:
        """Show the statistics of ``ref`` (``name@version``) or nothing."""
        if ref == self.dataset_ref:
            return
        self.dataset_ref = ref
        self._selection_changed()

    @Slot()
    def _selection_changed(self) -> None:
        self.histogram.clear()
        self.status.clear()
        self._generation += 1
        self._update_buttons()
        if self.dataset_ref and self.model and self.workspace is not None:
            self.read_cache()
        elif self.dataset_ref and not self.model:
            self.status.setText("Import a base model (Models page) to count tokens against it.")

    def clear(self) -> None:
        """Forget the statistics and the selection (locking); a running job goes on."""
        self._generation += 1
        self.histogram.clear()
        self.status.clear()
        self.dataset_ref = None
        self.model_box.blockSignals(True)
        self.model_box.clear()
        self.model_box.blockSignals(False)
        self._update_buttons()

    # -- the cache -------------------------------------------------------------------------------

    def read_cache(self) -> Task | None:
        """Read the cached statistics of the selection in the background."""
        workspace, ref, model = self.workspace, self.dataset_ref, self.model
        if workspace is None or workspace.locked or self.suspended or ref is None or model is None:
            return None
        generation = self._generation

        def work(_progress: Progress) -> TokenStats | None:
            with workspace.registry() as reg:
                return cached_token_stats(workspace.vault, reg, ref, model)

        task = Task("reading token statistics", work, self)
        task.succeeded.connect(lambda stats: self._cache_read(stats, generation))
        task.failed.connect(lambda message: self._cache_failed(message, generation))
        self.task = task
        task.start()
        return task

    def _cache_read(self, stats: TokenStats | None, generation: int) -> None:
        if generation != self._generation or self.suspended:
            return  # the selection changed meanwhile
        if stats is None:
            self.status.setText(
                f"Not counted yet against {self.model}: Count tokens runs the tokenizer in a "
                "separate process (it takes a little while the first time)."
            )
            return
        self._draw(stats)
        self.measured.emit(stats)

    def _cache_failed(self, message: str, generation: int) -> None:
        if generation == self._generation:
            self.status.setText(f"Cannot read the token statistics: {message}")

    def _draw(self, stats: TokenStats) -> None:
        cut = self.histogram.show_stats(stats, self.max_length.value(), self.split)
        summary = stats.summary(self.split)
        self.status.setText(
            f"{stats.dataset} against {stats.model}: {cut.examples:,} examples, "
            f"{summary['min']:,.0f} to {summary['max']:,.0f} tokens (median "
            f"{summary['median']:,.0f}, 95th percentile {summary['p95']:,.0f})."
        )

    @Slot()
    def _redraw(self) -> None:
        stats = self.histogram.stats
        if stats is not None:
            self._draw(stats)

    # -- the job ---------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.outcome is None

    @Slot()
    def count(self) -> JobProcess | None:
        """Start the token-stats job for the selection (in a child process)."""
        workspace, ref, model = self.workspace, self.dataset_ref, self.model
        if workspace is None or workspace.locked or self.suspended or not ref or not model:
            return None
        if self.busy:
            return None
        with workspace.registry() as reg:
            request = token_stats_request(workspace.vault, reg, ref, model)
        job = JobProcess(request, hang_s=COUNT_HANG_S, parent=self)
        job.progress.connect(self._job_progress)
        job.succeeded.connect(self._job_done)
        job.failed.connect(self._job_failed)
        if self.job is not None:
            self.job.deleteLater()
        self.job = job
        self.status.setText(f"Counting the tokens of {ref} with the tokenizer of {model}…")
        self.progress.setRange(0, 0)
        job.start()
        self._update_buttons()
        return job

    @Slot()
    def cancel(self) -> None:
        if self.job is not None and self.busy:
            self.cancel_button.setEnabled(False)
            self.job.cancel()

    @Slot(int, int, str)
    def _job_progress(self, done: int, total: int, stage: str) -> None:
        self.progress.setFormat(f"{_STAGES.get(stage, stage.capitalize())}: %p%")
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        else:
            self.progress.setRange(0, 0)

    @Slot(object)
    def _job_done(self, result: dict[str, Any]) -> None:
        self._update_buttons()
        if self.workspace is None or self.workspace.locked or self.suspended:
            return  # the page selects the version again on unlock, which reads the cache
        if self.dataset_ref == result.get("dataset") and self.model == result.get("model"):
            self.read_cache()

    @Slot(str)
    def _job_failed(self, message: str) -> None:
        self._update_buttons()
        if self.workspace is None or self.workspace.locked or self.suspended:
            return
        if self.job is not None and self.job.cancelled:
            self.status.setText("Counting cancelled.")
        else:
            self.status.setText(f"Counting tokens failed: {message}")

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop a running job (the window is closing)."""
        if self.job is not None and self.busy:
            self.job.end(timeout_s)

    def _update_buttons(self) -> None:
        busy = self.busy
        self.count_button.setEnabled(
            not busy and self.dataset_ref is not None and self.model is not None
        )
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.cancel_button.setEnabled(busy)
