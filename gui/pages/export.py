"""Export: an adapter version made into files a local server loads, verified, in a child process.

The form binds to the core's :class:`~appliance.export.ExportOptions`; before anything starts,
:func:`~appliance.export.preflight.plan_export` checks the destination and shows the expected
size against the free space (refusing what will not fit). The export itself is the ``export``
job (the same code as ``appliance export``) driven through :class:`~gui.process.JobProcess`:
this process never loads torch, the window stays live, Cancel stops the child, which removes its
staging folder, and the result panel shows the verification figures and the serving commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance.errors import ApplianceError, IntegrityError, UsageError
from appliance.export.options import DTYPES, GGUF_TYPES, ExportOptions
from appliance.export.preflight import ExportPlan, plan_export
from appliance.export.serving import exported_files, serving_commands
from appliance.progress import EXPORT_STAGES
from appliance.registry.catalog import live_refs
from appliance.training.lineage import ExportRecord, export_history
from appliance.unlocked import UnlockedWorkspace
from gui.pages.base import Page
from gui.process import JobProcess
from gui.style import ERROR_STYLE
from gui.widgets.export_result import ExportResultView

FORMAT_LABELS = {
    "merged": "Merged model (safetensors: transformers, vLLM)",
    "adapter": "PEFT adapter (peft, vLLM LoRA)",
    "gguf": "GGUF + Ollama Modelfile (llama.cpp, Ollama)",
}
DEFAULT_DTYPE = "default"
STEPS = (("load", "Load"), ("merge", "Merge"), ("write", "Write"), ("verify", "Verify"))
"""The stages a person follows; the core's finer stages map onto them (:data:`STAGE_STEP`)."""
STAGE_STEP = {
    "checking": "load",
    "loading": "load",
    "reference": "load",
    "merging": "merge",
    "writing": "write",
    "verifying": "verify",
    "finishing": "verify",
}
MARKS = {"pending": "○", "active": "▶", "done": "✔", "skipped": "–"}
EXPORT_HANG_S = 600.0
"""Loading a large base or converting it sends no progress for minutes: only a longer silence
is reported as hung."""
CANCEL_GRACE_S = 15.0


class ExportPage(Page):
    """Pick a version, a format and a destination; export in a child process; see the proof."""

    title = "Export"
    purpose = (
        "Merge an adapter into its base for local serving: safetensors, GGUF with an Ollama "
        "Modelfile, or a bare PEFT adapter, each reloaded and verified against the unmerged "
        "adapter."
    )
    expanding = True
    exported = Signal(str)
    """``NAME@N`` of a version whose export finished and verified."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.job: JobProcess | None = None
        self.plan: ExportPlan | None = None
        self.history: tuple[ExportRecord, ...] = ()
        self.stage_states: dict[str, str] = {key: "pending" for key, _ in STEPS}
        self._figures: dict[str, Any] | None = None
        self._locking = False

        form = QFormLayout()
        self.version_combo = QComboBox()
        self.version_combo.setObjectName("exportVersion")
        form.addRow("Adapter version:", self.version_combo)
        self.format_combo = QComboBox()
        for fmt, words in FORMAT_LABELS.items():
            self.format_combo.addItem(words, fmt)
        form.addRow("Format:", self.format_combo)
        self.dtype_combo = QComboBox()
        self.dtype_combo.addItem("default (bf16 merged, as trained for an adapter)", None)
        for dtype in DTYPES:
            self.dtype_combo.addItem(dtype, dtype)
        form.addRow("Precision:", self.dtype_combo)
        self.gguf_combo = QComboBox()
        for gguf_type in GGUF_TYPES:
            self.gguf_combo.addItem(gguf_type.upper(), gguf_type)
        self.gguf_combo.setCurrentIndex(GGUF_TYPES.index("q8_0"))
        form.addRow("GGUF type:", self.gguf_combo)
        self.form = form
        destination = QHBoxLayout()
        self.dest_edit = QLineEdit()
        self.dest_edit.setObjectName("exportDestination")
        self.dest_edit.setPlaceholderText("a new folder, e.g. /srv/models/contracts-q8")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse)
        destination.addWidget(self.dest_edit, 1)
        destination.addWidget(self.browse_button)
        form.addRow("Destination folder:", destination)
        self.force_check = QCheckBox("Replace an earlier export in that folder")
        form.addRow("", self.force_check)
        self.body.addLayout(form)

        self.plan_label = QLabel()
        self.plan_label.setObjectName("exportPlan")
        self.plan_label.setWordWrap(True)
        self.body.addWidget(self.plan_label)

        controls = QHBoxLayout()
        self.start_button = QPushButton("Start export")
        self.start_button.setDefault(True)
        self.start_button.clicked.connect(self.start_export)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the export; nothing is left in the destination.")
        self.cancel_button.clicked.connect(self.cancel_export)
        self.cancel_button.setEnabled(False)
        controls.addWidget(self.start_button)
        controls.addWidget(self.cancel_button)
        self.stage_labels: dict[str, QLabel] = {}
        for key, words in STEPS:
            label = QLabel(words)
            label.setObjectName(f"stage-{key}")
            self.stage_labels[key] = label
            controls.addWidget(label)
        self.progress = QProgressBar()
        controls.addWidget(self.progress, 1)
        self.body.addLayout(controls)
        self.status = QLabel()
        self.status.setObjectName("exportStatus")
        self.status.setWordWrap(True)
        self.body.addWidget(self.status)

        self.result_view = ExportResultView()
        self.body.addWidget(self.result_view, 2)
        history_box = QVBoxLayout()
        history_box.addWidget(QLabel("Exports of this version"))
        self.history_table = QTableWidget(0, 4)
        self.history_table.setObjectName("exportHistory")
        self.history_table.setHorizontalHeaderLabels(
            ("Time (UTC)", "Format", "Destination", "Verification")
        )
        self.history_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.history_table.verticalHeader().hide()
        self.history_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.history_table.horizontalHeader().setStretchLastSection(True)
        history_box.addWidget(self.history_table)
        self.body.addLayout(history_box, 1)

        for combo in (self.version_combo, self.format_combo, self.dtype_combo, self.gguf_combo):
            combo.currentIndexChanged.connect(self.update_plan)
        self.version_combo.currentIndexChanged.connect(self._load_history)
        self.format_combo.currentIndexChanged.connect(self._format_changed)
        self.dest_edit.editingFinished.connect(self.update_plan)
        self.force_check.toggled.connect(self.update_plan)
        # Enter starts the export from anywhere in the form (a page is not a dialog).
        for enter in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            shortcut = QShortcut(QKeySequence(enter), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(self.start_export)
        for first, second in (
            (self.version_combo, self.format_combo),
            (self.format_combo, self.dtype_combo),
            (self.dtype_combo, self.gguf_combo),
            (self.gguf_combo, self.dest_edit),
            (self.dest_edit, self.browse_button),
            (self.browse_button, self.force_check),
            (self.force_check, self.start_button),
            (self.start_button, self.cancel_button),
        ):
            self.setTabOrder(first, second)
        self._format_changed()
        self._show_stages()
        self.refresh()

    @property
    def usable(self) -> bool:
        """An unlocked workspace is there to read."""
        return self.workspace is not None and not self.workspace.locked and not self._locking

    def on_lock(self) -> None:
        # A running export goes on (its child holds its own key); its outcome is not drawn.
        self._locking = True
        self.version_combo.clear()
        self.history = ()
        self.history_table.setRowCount(0)
        self.result_view.clear()
        self.plan = None
        self.plan_label.clear()
        self.status.clear()

    def on_unlock(self) -> None:
        self._locking = False
        self.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        # Versions come and go while the page is hidden (a run finishes, one is deleted).
        if not self.busy:
            self.refresh()
        super().showEvent(event)

    # -- the form -----------------------------------------------------------------------------

    @Slot()
    def refresh(self) -> None:
        """Re-read the versions that can be exported (keeping the chosen one if it exists)."""
        if self.workspace is None or not self.usable:
            self.status.setText("Unlock the workspace to export its adapters.")
            self.start_button.setEnabled(False)
            return
        with self.workspace.registry() as reg:
            refs = live_refs(reg)
        current = self.version_combo.currentText()
        self.version_combo.blockSignals(True)
        self.version_combo.clear()
        self.version_combo.addItems(refs)
        if current in refs:
            self.version_combo.setCurrentText(current)
        self.version_combo.blockSignals(False)
        self._load_history()
        self.update_plan()

    def choose(self, ref: str) -> None:
        """Arrive with version ``ref`` chosen (from the Registry page)."""
        self.refresh()
        index = self.version_combo.findText(ref)
        if index < 0:  # deleted meanwhile, or a tag: keep it visible so the refusal names it
            self.version_combo.addItem(ref)
            index = self.version_combo.count() - 1
        self.version_combo.setCurrentIndex(index)

    @property
    def format(self) -> str:
        return str(self.format_combo.currentData())

    def options(self) -> ExportOptions:
        """The form as the core's options.

        Raises:
            UsageError: no destination, or an option outside its choices.
        """
        dest = self.dest_edit.text().strip()
        if not dest:
            raise UsageError("choose a destination folder for the export")
        fmt = self.format
        return ExportOptions.checked(
            fmt,
            Path(dest),
            dtype=self.dtype_combo.currentData() if fmt != "gguf" else None,
            gguf_type=str(self.gguf_combo.currentData()) if fmt == "gguf" else None,
            force=self.force_check.isChecked(),
        )

    @Slot()
    def _format_changed(self) -> None:
        gguf = self.format == "gguf"
        self.form.setRowVisible(self.gguf_combo, gguf)
        self.form.setRowVisible(self.dtype_combo, not gguf)

    @Slot()
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder to export into")
        if folder:
            self.dest_edit.setText(str(Path(folder) / self.suggested_name()))
            self.update_plan()

    def suggested_name(self) -> str:
        """A new folder name for the chosen version and format, e.g. ``legal-3-gguf-q8_0``."""
        ref = self.version_combo.currentText() or "adapter"
        name = ref.replace("@", "-")
        detail = str(self.gguf_combo.currentData()) if self.format == "gguf" else ""
        return "-".join(p for p in (name, self.format, detail) if p)

    @Slot()
    def update_plan(self) -> ExportPlan | None:
        """Check the form with the core's preflight and show the size against free space."""
        self.plan = None
        ref = self.version_combo.currentText()
        busy = self.busy
        if self.workspace is None or not self.usable or not ref:
            self.plan_label.setText("No adapter version to export yet.")
            self.start_button.setEnabled(False)
            return None
        if not self.dest_edit.text().strip():
            self._plan_text("Choose a destination folder (a new folder is created there).")
            self.start_button.setEnabled(not busy)
            return None
        try:
            with self.workspace.registry() as reg:
                self.plan = plan_export(reg, ref, self.options())
        except ApplianceError as exc:
            self._plan_text(str(exc), error=True)
            self.start_button.setEnabled(not busy)
            return None
        self._plan_text(
            f"Will write {self.plan.out}: {self.plan.space.describe()}. "
            f"Base model {self.plan.base_model}."
        )
        self.start_button.setEnabled(not busy)
        return self.plan

    def _plan_text(self, text: str, *, error: bool = False) -> None:
        self.plan_label.setStyleSheet(ERROR_STYLE if error else "")
        self.plan_label.setText(text)

    # -- running ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.outcome is None

    @Slot()
    def start_export(self) -> JobProcess | None:
        """Check again, then start the ``export`` job; None (and the reason shown) if refused."""
        if self.workspace is None or not self.usable or self.busy:
            return None
        plan = self.update_plan()
        if plan is None:
            if self.plan_label.text():
                self._say(f"Not started: {self.plan_label.text()}", error=True)
            return None
        try:
            request = plan.request(self.workspace.vault)
        except ApplianceError as exc:
            self._say(f"Not started: {exc}", error=True)
            return None
        job = JobProcess(request, hang_s=EXPORT_HANG_S, parent=self)
        job.progress.connect(self._show_progress)
        job.output.connect(self._on_output)
        job.succeeded.connect(self._succeeded)
        job.failed.connect(self._failed)
        job.hung.connect(self._hung)
        job.resumed.connect(self._resumed)
        if self.job is not None:
            self.job.deleteLater()
        self.job = job
        self._figures = None
        self.result_view.clear()
        self.stage_states = {key: "pending" for key, _ in STEPS}
        if plan.options.format == "adapter":
            self.stage_states["merge"] = "skipped"
        self._show_stages()
        self._set_busy(True)
        self._say(f"Exporting {plan.ref} as {plan.options.format} to {plan.out}…")
        job.start()
        return job

    @Slot()
    def cancel_export(self) -> None:
        """Cancel the running export (after a hang: kill it)."""
        job = self.job
        if job is None or not self.busy:
            return
        self.cancel_button.setEnabled(False)
        if self.cancel_button.text() == "Kill":
            self._say("Killing the export…")
            job.kill()
        else:
            self._say("Cancelling the export; its files are being removed…")
            job.cancel(CANCEL_GRACE_S)

    def shutdown(self, timeout_s: float = CANCEL_GRACE_S) -> None:
        """Cancel a running export and wait for its child to clean up (the window is closing)."""
        if self.job is not None and self.busy:
            self.job.end(timeout_s)

    def _set_busy(self, busy: bool) -> None:
        for widget in (
            self.version_combo,
            self.format_combo,
            self.dtype_combo,
            self.gguf_combo,
            self.dest_edit,
            self.browse_button,
            self.force_check,
            self.start_button,
        ):
            widget.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.cancel_button.setText("Cancel")
        self.progress.setRange(0, 0 if busy else 1)
        self.progress.setValue(0)

    def _show_stages(self) -> None:
        for key, words in STEPS:
            state = self.stage_states[key]
            label = self.stage_labels[key]
            label.setText(f"{MARKS[state]} {words}")
            label.setStyleSheet("font-weight: bold;" if state == "active" else "")
            label.setToolTip(state)

    @Slot(int, int, str)
    def _show_progress(self, done: int, total: int, stage: str) -> None:
        step = STAGE_STEP.get(stage)
        if step is not None:
            keys = [key for key, _ in STEPS]
            at = keys.index(step)
            for i, key in enumerate(keys):
                if self.stage_states[key] == "skipped":
                    continue
                self.stage_states[key] = "done" if i < at else "active" if i == at else "pending"
            self._show_stages()
        words = EXPORT_STAGES.get(stage, stage.capitalize())
        if total > 0:
            scale = 1024 if total >= 2**31 else 1
            self.progress.setRange(0, max(1, total // scale))
            self.progress.setValue(min(done, total) // scale)
            self.progress.setFormat(f"{words}: %p%")
        else:
            self.progress.setRange(0, 0)
        if self.job is not None and not self.job.cancelled and self.usable:
            self._say(f"{words}…")

    @Slot(object)
    def _on_output(self, data: dict[str, Any]) -> None:
        figures = data.get("verification")
        if isinstance(figures, dict):
            self._figures = figures

    @Slot(object)
    def _succeeded(self, record: dict[str, Any]) -> None:
        self._set_busy(False)
        self.stage_states = {
            key: ("skipped" if state == "skipped" else "done")
            for key, state in self.stage_states.items()
        }
        self._show_stages()
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("Done")
        if not self.usable:
            return  # finished while the window was locked: its history shows it later
        out = Path(record["path"])
        try:
            files = exported_files(out)
        except IntegrityError as exc:
            self.result_view.show_failure(f"the export finished but {exc}", None)
            self._say(str(exc), error=True)
            return
        name = str(record["adapter"]).partition("@")[0]
        self.result_view.show_success(
            record,
            files,
            serving_commands(record, name=name, base_folder=self._base_folder(record)),
            record.get("warnings") or [],
        )
        self._say(f"Exported and verified {record['adapter']} to {out}.")
        self._load_history()
        self._plan_text("For another export, choose a new destination folder.")
        self.exported.emit(str(record["adapter"]))

    def _base_folder(self, record: dict[str, Any]) -> Path | None:
        base = (record.get("details") or {}).get("base_model")
        if self.workspace is None or not base:
            return None
        try:
            with self.workspace.registry() as reg:
                path = Path(reg.models.get(str(base))["path"])
        except ApplianceError:
            return None
        return path if path.is_absolute() else self.workspace.ws.home / path

    @Slot(str)
    def _failed(self, message: str) -> None:
        self._set_busy(False)
        cancelled = self.job is not None and self.job.cancelled
        for key, state in self.stage_states.items():
            if state == "active":
                self.stage_states[key] = "pending"
        self._show_stages()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        if not self.usable:
            return
        if cancelled:
            self.result_view.clear()
            self._say("Export cancelled; nothing was left in the destination.")
        else:
            self.result_view.show_failure(message, self._figures)
            self._say(f"Export failed: {message}", error=True)
        self._load_history()
        self.update_plan()

    @Slot(str)
    def _hung(self, message: str) -> None:
        self._say(f"The export seems stuck: {message}.", error=True)
        self.cancel_button.setText("Kill")
        self.cancel_button.setEnabled(True)

    @Slot()
    def _resumed(self) -> None:
        self._say("The export is making progress again…")
        self.cancel_button.setText("Cancel")

    # -- history ------------------------------------------------------------------------------

    @Slot()
    def _load_history(self) -> None:
        ref = self.version_combo.currentText()
        self.history = ()
        if self.workspace is not None and self.usable and ref:
            try:
                with self.workspace.registry() as reg:
                    self.history = export_history(reg, ref)
            except ApplianceError:
                self.history = ()
        rows = list(reversed(self.history))
        self.history_table.setRowCount(len(rows))
        for r, record in enumerate(rows):
            if record.passed is None:
                verdict = "recorded"
            elif record.passed:
                diff = record.max_abs_diff
                verdict = "✔ verified" + (f" (max |Δlogit| {diff:.3g})" if diff is not None else "")
            else:
                verdict = "✘ failed verification (removed)"
            cells = (
                record.created_at[:19].replace("T", " "),
                record.format,
                record.path,
                verdict,
            )
            for c, text in enumerate(cells):
                self.history_table.setItem(r, c, QTableWidgetItem(text))

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status.setText(text)
