"""The import wizard: a file, its format and column mapping, a validation report, then storing.

A thin view over the core's :func:`~appliance.datasets.wizard.preview_import` (reads the file,
stores nothing) and :func:`~appliance.datasets.wizard.store_import` (encrypts it as a version),
both on background tasks with progress and Cancel. Every change of format, mapping or eval
share reads the file again, so what the report lists is exactly what Import would do; the
messages are the CLI's. Nothing reaches the workspace before Import, and a cancelled store
leaves nothing behind.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from appliance.datasets.columns import FORMAT_ROLES, ROLES
from appliance.datasets.formats import FORMATS
from appliance.datasets.wizard import ImportPreview, preview_import, store_import
from appliance.errors import UsageError
from appliance.progress import Progress
from appliance.registry.refs import check_name
from appliance.unlocked import UnlockedWorkspace
from gui.style import ERROR_STYLE
from gui.tasks import Task
from gui.widgets.rows_table import RowsView

if TYPE_CHECKING:
    from appliance.registry.rows import DatasetVersionRow

FORMAT_LABELS = {
    "messages": "Chat messages (role/content turns)",
    "sharegpt": "ShareGPT conversations (from/value turns)",
    "alpaca": "Instruction / input / output",
    "completion": "Prompt / completion",
    "text": "Plain text",
}
"""What each of the core's formats is called here."""
PROBLEMS_SHOWN = 2000
"""Problems listed in the report table; the rest are counted in its last row."""
FILE_FILTER = "Datasets (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All files (*)"


def suggest_name(path: Path) -> str:
    """A valid dataset name from a file name ("Legal QA (v2).csv" -> "legal-qa-v2")."""
    stem = path.stem.lower()
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem)
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "-")
    cleaned = cleaned.strip("-._")
    return cleaned[:100] or "dataset"


class ImportWizard(QDialog):
    """Import one file as a new dataset, or as the next version of an existing one.

    Emits :attr:`stored` with the new version's registry row and closes after a store.
    """

    stored = Signal(object)

    def __init__(
        self,
        workspace: UnlockedWorkspace,
        path: Path | None = None,
        existing: list[str] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.existing = sorted(existing or [])
        self.path: Path | None = None
        self.preview: ImportPreview | None = None
        self.error: str | None = None
        self.preview_task: Task | None = None
        self.store_task: Task | None = None
        self._preview_cancel = threading.Event()
        self._store_cancel = threading.Event()
        self._generation = 0
        self._columns: list[str] | None = None
        self._building = False
        self.setWindowTitle("Import a dataset")
        self.resize(980, 720)
        layout = QVBoxLayout(self)

        # -- the file and how to read it ---------------------------------------------------------
        source = QFormLayout()
        file_row = QHBoxLayout()
        self.file_edit = QLineEdit()
        self.file_edit.setReadOnly(True)
        self.file_edit.setPlaceholderText("Choose a file, or drop one on the Datasets page")
        file_row.addWidget(self.file_edit, 1)
        self.browse_button = QPushButton("Choose…")
        self.browse_button.clicked.connect(self._browse)
        file_row.addWidget(self.browse_button)
        source.addRow("File:", file_row)
        self.format_box = QComboBox()
        self.format_box.setObjectName("formatBox")
        self.format_box.addItem("Detect from the fields", "auto")
        for fmt in FORMATS:
            self.format_box.addItem(FORMAT_LABELS[fmt], fmt)
        self.format_box.currentIndexChanged.connect(self._options_changed)
        format_row = QHBoxLayout()
        format_row.addWidget(self.format_box)
        self.detected_label = QLabel()
        self.detected_label.setObjectName("detectedLabel")
        self.detected_label.setWordWrap(True)
        format_row.addWidget(self.detected_label, 1)
        source.addRow("Format:", format_row)
        self.eval_box = QDoubleSpinBox()
        self.eval_box.setRange(0.0, 0.5)
        self.eval_box.setSingleStep(0.05)
        self.eval_box.setDecimals(2)
        self.eval_box.setValue(0.1)
        self.eval_box.valueChanged.connect(self._options_changed)
        eval_row = QHBoxLayout()
        eval_row.addWidget(self.eval_box)
        eval_row.addWidget(QLabel("of the rows (the CLI's --eval-fraction), split with seed 42"))
        eval_row.addStretch(1)
        source.addRow("Held out for evaluation:", eval_row)
        layout.addLayout(source)

        self.mapping_group = QGroupBox("Columns: which column holds which field")
        self.mapping_form = QFormLayout(self.mapping_group)
        self.mapping_boxes: dict[str, QComboBox] = {}
        self.mapping_group.hide()
        layout.addWidget(self.mapping_group)

        # -- what would be stored ----------------------------------------------------------------
        self.summary = QLabel()
        self.summary.setObjectName("summary")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.error_label = QLabel()
        self.error_label.setObjectName("wizardError")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()
        layout.addWidget(self.error_label)
        self.tabs = QTabWidget()
        self.rows_view = RowsView()
        self.tabs.addTab(self.rows_view, "First rows")
        self.problems = QTableWidget(0, 4)
        self.problems.setObjectName("problemsTable")
        self.problems.setHorizontalHeaderLabels(["File", "Line", "Field", "Problem"])
        self.problems.verticalHeader().hide()
        self.problems.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.problems.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        header = self.problems.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.tabs.addTab(self.problems, "Problems")
        layout.addWidget(self.tabs, 1)

        # -- where to store it -------------------------------------------------------------------
        target = QGroupBox("Store as")
        target_layout = QFormLayout(target)
        self.new_radio = QRadioButton("New dataset:")
        self.name_edit = QLineEdit()
        self.name_edit.setObjectName("datasetName")
        self.name_edit.textChanged.connect(self._update_buttons)
        target_layout.addRow(self.new_radio, self.name_edit)
        self.version_radio = QRadioButton("New version of:")
        self.existing_box = QComboBox()
        self.existing_box.addItems(self.existing)
        target_layout.addRow(self.version_radio, self.existing_box)
        self.target_group = QButtonGroup(self)
        self.target_group.addButton(self.new_radio)
        self.target_group.addButton(self.version_radio)
        self.new_radio.setChecked(True)
        self.version_radio.setEnabled(bool(self.existing))
        self.existing_box.setEnabled(bool(self.existing))
        self.skip_box = QCheckBox()
        self.skip_box.setObjectName("skipInvalid")
        self.skip_box.toggled.connect(self._update_buttons)
        self.skip_box.hide()
        target_layout.addRow(self.skip_box)
        layout.addWidget(target)

        bottom = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.hide()
        bottom.addWidget(self.progress, 1)
        self.status = QLabel()
        self.status.setObjectName("wizardStatus")
        bottom.addWidget(self.status, 1)
        self.import_button = QPushButton("Import")
        self.import_button.setObjectName("importButton")
        self.import_button.setDefault(True)
        self.import_button.clicked.connect(self.store)
        bottom.addWidget(self.import_button)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.clicked.connect(self.cancel)
        bottom.addWidget(self.cancel_button)
        layout.addLayout(bottom)
        self.finished.connect(self._forget)
        self._update_buttons()
        if path is not None:
            self.set_path(path)

    # -- reading the file ------------------------------------------------------------------------

    @property
    def fmt(self) -> str:
        return str(self.format_box.currentData())

    def mapping(self) -> dict[str, str]:
        """Role -> column, as chosen in the column boxes (unmapped roles left out)."""
        out = {}
        for role, box in self.mapping_boxes.items():
            column = box.currentData()
            if column:
                out[role] = str(column)
        return out

    def set_mapping(self, roles: dict[str, str]) -> None:
        """Choose columns for roles (as a person would in the boxes), then read again."""
        self._building = True
        try:
            for role, column in roles.items():
                box = self.mapping_boxes.get(role)
                if box is None:
                    shown = list(self.mapping_boxes)
                    raise KeyError(f"no column box for role {role!r} (shown: {shown})")
                index = box.findData(column)
                if index < 0:
                    raise KeyError(f"no column {column!r} in the box of {role!r}")
                box.setCurrentIndex(index)
        finally:
            self._building = False
        self.refresh_preview()

    def set_format(self, fmt: str) -> None:
        """Choose a format (``auto`` or one of the core's) as the format box would."""
        index = self.format_box.findData(fmt)
        if index < 0:
            raise KeyError(f"unknown format {fmt!r}")
        self.format_box.setCurrentIndex(index)

    def set_path(self, path: Path) -> None:
        """Read ``path`` (detecting its format) and suggest a name."""
        self.path = Path(path).absolute()
        self.file_edit.setText(str(self.path))
        self._columns = None
        self._building = True
        self.format_box.setCurrentIndex(0)
        self._building = False
        self._rebuild_mapping()
        name = suggest_name(self.path)
        self.name_edit.setText(name)
        if name in self.existing:
            self.version_radio.setChecked(True)
            self.existing_box.setCurrentText(name)
        self.refresh_preview()

    @Slot()
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Dataset file", "", FILE_FILTER)
        if path:
            self.set_path(Path(path))

    @Slot()
    def _options_changed(self) -> None:
        if self._building:
            return
        self._rebuild_mapping()
        self.refresh_preview()

    def refresh_preview(self) -> Task | None:
        """Read the file again with the chosen options, in the background."""
        if self.path is None:
            return None
        self._preview_cancel.set()  # a reading still running is for options no longer chosen
        self._preview_cancel = cancel = threading.Event()
        self._generation += 1
        generation = self._generation
        path, fmt, mapping, fraction = self.path, self.fmt, self.mapping(), self.eval_box.value()

        def work(progress: Progress) -> ImportPreview:
            return preview_import(
                path,
                fmt,
                mapping or None,
                eval_fraction=fraction,
                progress=progress,
                cancel=cancel,
            )

        task = Task("reading the file", work, self)
        task.progress.connect(lambda d, t, s: self._show_progress(d, t, s, generation))
        task.succeeded.connect(lambda p: self._previewed(p, generation))
        task.failed.connect(lambda m: self._preview_failed(m, generation))
        self.preview_task = task
        self.preview = None
        self.error = None
        self._set_busy("Reading the file…")
        task.start()
        return task

    def _show_progress(self, done: int, total: int, stage: str, generation: int) -> None:
        if generation != self._generation and stage != "encrypting":
            return
        label = {"checking": "Checking rows", "encrypting": "Encrypting"}.get(stage, stage)
        self.progress.setFormat(f"{label}: %p%")
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        else:
            self.progress.setRange(0, 0)

    def _previewed(self, preview: ImportPreview, generation: int) -> None:
        if generation != self._generation:
            return
        self.preview = preview
        self.error = None
        if self._columns != preview.columns or (
            self.mapping_group.isHidden() and self._mapping_wanted(self.mapping())
        ):
            self._columns = preview.columns
            self._rebuild_mapping()
        self._show_preview(preview)
        self._set_busy("")

    def _preview_failed(self, message: str, generation: int) -> None:
        if generation != self._generation:
            return
        self.preview = None
        self._show_error(message)
        self.rows_view.clear()
        self.problems.setRowCount(0)
        self.summary.clear()
        self.detected_label.clear()
        self._set_busy("")

    def _show_error(self, message: str) -> None:
        self.error = message
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    def _rebuild_mapping(self) -> None:
        """One column box per field of the chosen (else detected) format."""
        chosen = dict(self.mapping())
        while self.mapping_form.rowCount():
            self.mapping_form.removeRow(0)
        self.mapping_boxes = {}
        columns = self._columns
        fmt = self.fmt
        if fmt == "auto" and self.preview is not None:
            fmt = self.preview.format or self.preview.detected or "auto"
        if not self._mapping_wanted(chosen):
            self.mapping_group.hide()
            return
        if not columns or fmt not in FORMAT_ROLES:
            self.mapping_group.setVisible(bool(columns))
            if columns:
                self.mapping_form.addRow(
                    QLabel(
                        "The columns do not name a known format: choose the format above, then "
                        "say which column holds each of its fields."
                    )
                )
            return
        self.mapping_group.show()
        for role in FORMAT_ROLES[fmt]:
            box = QComboBox()
            box.setObjectName(f"map_{role}")
            box.addItem(f"(a column named '{role}')", "")
            for column in columns:
                if column != role:
                    box.addItem(column, column)
            if role in chosen:
                index = box.findData(chosen[role])
                box.setCurrentIndex(max(index, 0))
            box.currentIndexChanged.connect(self._mapping_changed)
            box.setToolTip(ROLES[role])
            self.mapping_boxes[role] = box
            self.mapping_form.addRow(f"{role}:", box)

    def _mapping_wanted(self, chosen: dict[str, str]) -> bool:
        """Whether to show the column boxes: for a table (CSV, TSV, Parquet), a file whose
        fields name no format, or when a mapping is set; not for a JSON file named right."""
        preview = self.preview
        if not self._columns:
            return False
        if chosen or preview is None:
            return True
        return (
            preview.source_kind in ("csv", "tsv", "parquet")
            or preview.detected is None
            or preview.format_error is not None
        )

    @Slot()
    def _mapping_changed(self) -> None:
        if not self._building:
            self.refresh_preview()

    def _show_preview(self, preview: ImportPreview) -> None:
        detected = FORMAT_LABELS.get(preview.detected or "")
        others = [FORMAT_LABELS[f] for f in preview.candidates if f != preview.detected]
        text = f"Detected: {detected}." if detected else "The format could not be detected."
        if others:
            text += f" The fields also fit: {', '.join(others)}."
        self.detected_label.setText(text)
        if preview.format_error:
            self._show_error(preview.format_error)
        else:
            self._show_error("")
        self.rows_view.rows.set_rows([(str(line), row) for line, row in preview.sample], "Line")
        self._fill_problems(preview)
        if preview.format is None:
            self.summary.setText(f"{preview.source_name}: {preview.records:,} examples read.")
        else:
            self.summary.setText(
                f"{preview.source_name}: {preview.records:,} examples, "
                f"{preview.valid_rows:,} valid and {preview.invalid_rows:,} invalid; "
                f"{preview.duplicates:,} duplicates would be removed; "
                f"{preview.train_rows:,} for training and {preview.eval_rows:,} held out for "
                f"evaluation. Format: {FORMAT_LABELS[preview.format]}."
            )
        bad = preview.invalid_rows
        self.skip_box.setVisible(bad > 0 and preview.valid_rows > 0)
        self.skip_box.setChecked(False)
        self.skip_box.setText(
            f"Skip the {bad:,} invalid row{'s' * (bad != 1)} and import the "
            f"{preview.valid_rows:,} valid one{'s' * (preview.valid_rows != 1)} (the lines "
            "skipped are recorded with the version)"
        )
        self.tabs.setTabText(1, f"Problems ({len(preview.problems):,})")
        self.tabs.setCurrentIndex(1 if preview.problems else 0)

    def _fill_problems(self, preview: ImportPreview) -> None:
        shown = preview.problems[:PROBLEMS_SHOWN]
        rest = len(preview.problems) - len(shown)
        self.problems.setRowCount(len(shown) + (1 if rest > 0 else 0))
        for r, p in enumerate(shown):
            cells = (p.file, str(p.line) if p.line else "", p.field or "", p.problem)
            for c, text in enumerate(cells):
                self.problems.setItem(r, c, QTableWidgetItem(text))
        if rest > 0:
            self.problems.setItem(len(shown), 3, QTableWidgetItem(f"… and {rest:,} more"))

    def problem_rows(self) -> list[tuple[str, str, str, str]]:
        """The report table's rows (file, line, field, problem) as shown."""
        out = []
        for r in range(self.problems.rowCount()):
            items = [self.problems.item(r, c) for c in range(4)]
            cells = tuple(item.text() if item is not None else "" for item in items)
            out.append((cells[0], cells[1], cells[2], cells[3]))
        return out

    # -- storing ---------------------------------------------------------------------------------

    def target_name(self) -> str:
        """The dataset the file goes to.

        Raises:
            UsageError: an invalid name, or a new dataset under a name that exists.
        """
        if self.version_radio.isChecked():
            return self.existing_box.currentText()
        name = self.name_edit.text().strip()
        check_name(name, "dataset name")
        if name in self.existing:
            raise UsageError(
                f"a dataset named {name!r} exists already; choose 'New version of' to add a "
                "version to it, or another name"
            )
        return name

    @Slot()
    def store(self) -> Task | None:
        """Store the previewed rows (the Import button)."""
        preview = self.preview
        if preview is None or self.busy or self.workspace.locked:
            return None
        try:
            name = self.target_name()
        except UsageError as exc:
            self._show_error(str(exc))
            return None
        skip = self.skip_box.isChecked()
        error = preview.validation_error()
        if error is not None and not skip:
            self._show_error(f"{error} (tick the box above to skip them)")
            self.tabs.setCurrentIndex(1)
            return None
        workspace = self.workspace
        self._store_cancel = cancel = threading.Event()

        def work(progress: Progress) -> DatasetVersionRow:
            with workspace.registry() as reg:
                version, _ = store_import(
                    workspace.vault,
                    reg,
                    preview,
                    name,
                    skip_invalid=skip,
                    progress=progress,
                    cancel=cancel,
                )
            return version

        task = Task("storing the dataset", work, self)
        task.progress.connect(lambda d, t, s: self._show_progress(d, t, s, self._generation))
        task.succeeded.connect(self._stored)
        task.failed.connect(self._store_failed)
        self.store_task = task
        self._show_error("")
        self._set_busy(f"Encrypting into {name}…")
        task.start()
        return task

    @Slot(object)
    def _stored(self, version: dict[str, Any]) -> None:
        self._set_busy("")
        self.status.setText(f"Stored {version['name']} version {version['version']}.")
        self.stored.emit(version)
        self.accept()

    @Slot(str)
    def _store_failed(self, message: str) -> None:
        self._set_busy("")
        if self._store_cancel.is_set():
            self.status.setText("Import cancelled; nothing was stored.")
        else:
            self._show_error(message)

    @property
    def busy(self) -> bool:
        return any(t is not None and t.running for t in (self.preview_task, self.store_task))

    @property
    def storing(self) -> bool:
        return self.store_task is not None and self.store_task.running

    @Slot()
    def cancel(self) -> None:
        """Stop a store in progress (nothing is kept); otherwise close without storing."""
        if self.storing:
            self._store_cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling…")
            return
        self._preview_cancel.set()
        self.reject()

    def running_tasks(self) -> list[Task]:
        return [t for t in (self.preview_task, self.store_task) if t is not None and t.running]

    def abandon(self) -> None:
        """Cancel everything, forget the file's rows and close (the window is being locked)."""
        self._preview_cancel.set()
        self._store_cancel.set()
        self._generation += 1
        self._forget()
        self.reject()

    @Slot()
    def _forget(self) -> None:
        self._preview_cancel.set()
        self.preview = None
        self.rows_view.clear()
        self.problems.setRowCount(0)
        self.summary.clear()

    def _set_busy(self, text: str) -> None:
        busy = bool(text)
        self.progress.setVisible(busy)
        if busy:
            self.progress.setRange(0, 0)
            self.progress.setFormat(text)
        self.status.setText(text)
        self._update_buttons()

    @Slot()
    def _update_buttons(self) -> None:
        storing = self.storing
        preview = self.preview
        can = preview is not None and preview.can_store and not self.busy
        if preview is not None and preview.problems and not self.skip_box.isChecked():
            can = False
        self.import_button.setEnabled(bool(can) and not self.workspace.locked)
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel import" if storing else "Cancel")
        for widget in (self.browse_button, self.format_box, self.eval_box, self.mapping_group):
            widget.setEnabled(not storing)
        self.new_radio.setEnabled(not storing)
        self.version_radio.setEnabled(bool(self.existing) and not storing)
