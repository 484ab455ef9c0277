"""Models: the base models of the workspace, and importing new ones in a child process.

An import (a GGUF file is converted with transformers and torch) runs as the ``model-import``
job through :class:`~gui.process.JobProcess`: this process never loads those libraries, the
window stays responsive, and Cancel stops the child, which removes what it had staged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from appliance.jobs import JobRequest
from appliance.progress import MODEL_IMPORT_STAGES
from appliance.units import format_bytes, format_count
from appliance.unlocked import UnlockedWorkspace
from gui.pages.base import Page
from gui.process import JobProcess
from gui.style import ERROR_STYLE

if TYPE_CHECKING:
    from appliance.registry.rows import BaseModelRow

COLUMNS = ("Name", "Architecture", "Parameters", "Context", "Chat template", "Size", "Imported")
IMPORT_HANG_S = 600.0
"""A GGUF conversion sends no progress while transformers loads the file: only a silence longer
than this (minutes, on a large model) is reported as hung."""
CANCEL_GRACE_S = 10.0
"""How long a cancelled import may take to clean up before it is killed."""


class ModelsPage(Page):
    """Lists base models from the registry; imports run as child processes (jobs)."""

    title = "Models"
    purpose = (
        "Base models enter the workspace only as safetensors folders or GGUF files; pickle "
        "weights and remote code are refused."
    )
    imported = Signal(str)
    """The name of a model whose import finished."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.job: JobProcess | None = None
        self._busy_text = ""
        self._locking = False

        buttons = QHBoxLayout()
        self.import_folder_button = QPushButton("Import folder…")
        self.import_folder_button.clicked.connect(self._ask_folder)
        self.import_gguf_button = QPushButton("Import GGUF file…")
        self.import_gguf_button.clicked.connect(self._ask_gguf)
        buttons.addWidget(self.import_folder_button)
        buttons.addWidget(self.import_gguf_button)
        buttons.addStretch(1)
        self.body.addLayout(buttons)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(220)
        self.body.addWidget(self.table)

        self.status = QLabel()
        self.status.setObjectName("importStatus")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the import; nothing of it is kept.")
        self.cancel_button.clicked.connect(self.cancel_import)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)
        self.progress.hide()
        self.cancel_button.hide()
        self.body.addLayout(progress_row)
        self.body.addWidget(self.status)
        self.refresh()

    def models(self) -> list[BaseModelRow]:
        if self.workspace is None or self.workspace.locked or self._locking:
            return []  # an import finishing while the window is locked lists nothing
        with self.workspace.registry() as reg:
            return reg.models.all()

    @Slot()
    def refresh(self) -> None:
        rows = self.models()
        self.table.setRowCount(len(rows))
        for r, model in enumerate(rows):
            cells = (
                model["name"],
                model["architecture"],
                format_count(int(model["parameters"])),
                str(model.get("context_length") or "?"),
                "yes" if model.get("has_chat_template") else "no",
                format_bytes(int(model["total_bytes"])),
                str(model["created_at"]).replace("T", " ")[:16],
            )
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c in (2, 3, 5):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(r, c, item)
        if self.workspace is None:
            self.status.setText("Unlock the workspace to see its models.")

    def on_lock(self) -> None:
        self._locking = True
        self.table.setRowCount(0)

    def on_unlock(self) -> None:
        self._locking = False
        self.refresh()

    def names(self) -> list[str]:
        items = (self.table.item(r, 0) for r in range(self.table.rowCount()))
        return [item.text() for item in items if item is not None]

    def start_import(self, source: Path, name: str, *, link: bool = False) -> JobProcess:
        """Import ``source`` as ``name`` in a child process; the page shows its progress.

        Raises:
            RuntimeError: no unlocked workspace, or an import is running already (the buttons
                are disabled then, so only a caller in code can get here).
        """
        if self.workspace is None:
            raise RuntimeError("no unlocked workspace")
        if self.busy:
            raise RuntimeError("an import is already running")
        request = JobRequest.for_vault(
            self.workspace.vault,
            "model-import",
            {"source": str(source), "name": name, "link": link},
            writes_registry=True,
        )
        job = JobProcess(request, hang_s=IMPORT_HANG_S, parent=self)
        job.progress.connect(self._show_progress)
        job.succeeded.connect(self._import_done)
        job.failed.connect(self._import_failed)
        job.hung.connect(self._import_hung)
        job.resumed.connect(self._import_resumed)
        if self.job is not None:
            self.job.deleteLater()  # the previous import's, kept until now for its outcome
        self.job = job
        self._busy_text = f"Importing {name} from {source}"
        self._set_busy(True, f"{self._busy_text}…")
        job.start()
        return job

    @property
    def busy(self) -> bool:
        """Whether an import is running."""
        return self.job is not None and self.job.outcome is None

    @Slot()
    def cancel_import(self) -> None:
        """Cancel the running import (after a hang: kill it)."""
        job = self.job
        if job is None or not self.busy:
            return
        self.cancel_button.setEnabled(False)
        if self.cancel_button.text() == "Kill":
            self.status.setText("Killing the import…")
            job.kill()
        else:
            self.status.setText("Cancelling the import…")
            job.cancel(CANCEL_GRACE_S)

    def shutdown(self, timeout_s: float = CANCEL_GRACE_S) -> None:
        """Cancel a running import and wait for its child to clean up (the window is closing)."""
        if self.job is not None and self.busy:
            self.job.end(timeout_s)

    def _set_busy(self, busy: bool, text: str) -> None:
        self.import_folder_button.setEnabled(not busy)
        self.import_gguf_button.setEnabled(not busy)
        self.progress.setVisible(busy)
        self.progress.setRange(0, 0)
        self.progress.setFormat("Starting")
        self.cancel_button.setVisible(busy)
        self.cancel_button.setEnabled(busy)
        self.cancel_button.setText("Cancel")
        self.status.setStyleSheet("")
        self.status.setText(text)

    @Slot(int, int, str)
    def _show_progress(self, done: int, total: int, stage: str) -> None:
        label = MODEL_IMPORT_STAGES.get(stage, stage.capitalize())
        self.progress.setFormat(f"{label}: %p%")
        if total > 1 or (total == 1 and done >= 1):
            # QProgressBar holds an int: count large totals (bytes) in KiB so multi-GB fit.
            scale = 1024 if total >= 2**31 else 1
            self.progress.setRange(0, max(1, total // scale))
            self.progress.setValue(min(done, total) // scale)
        else:
            # No measure (a whole conversion is one step): a busy bar, which shows no text.
            self.progress.setRange(0, 0)
        if self.job is not None and not self.job.cancelled:
            self.status.setText(f"{self._busy_text}: {label}…")

    @Slot(object)
    def _import_done(self, model: BaseModelRow) -> None:
        self._set_busy(False, f"Imported {model['name']} ({model['architecture']}).")
        self.refresh()
        self.imported.emit(model["name"])

    @Slot(str)
    def _import_failed(self, message: str) -> None:
        if self.job is not None and self.job.cancelled:
            self._set_busy(False, "Import cancelled; nothing was added to the workspace.")
            return
        self._set_busy(False, f"Import failed: {message}")
        self.status.setStyleSheet(ERROR_STYLE)

    @Slot(str)
    def _import_hung(self, message: str) -> None:
        self.status.setText(f"The import seems stuck: {message}.")
        self.status.setStyleSheet(ERROR_STYLE)
        self.cancel_button.setText("Kill")
        self.cancel_button.setToolTip("Kill the import process now.")
        self.cancel_button.setEnabled(True)

    @Slot()
    def _import_resumed(self) -> None:
        self.status.setStyleSheet("")
        self.status.setText("The import is making progress again…")
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Stop the import; nothing of it is kept.")

    def _ask_name(self, source: Path) -> str | None:
        suggestion = source.stem.lower().replace(" ", "-").replace(".", "-")
        name, ok = QInputDialog.getText(
            self, "Model name", "Name in the workspace:", text=suggestion
        )
        return name.strip() if ok and name.strip() else None

    @Slot()
    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Hugging Face model folder")
        if folder and (name := self._ask_name(Path(folder))):
            self.start_import(Path(folder), name)

    @Slot()
    def _ask_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "GGUF model file", "", "GGUF models (*.gguf)")
        if path and (name := self._ask_name(Path(path))):
            self.start_import(Path(path), name)
