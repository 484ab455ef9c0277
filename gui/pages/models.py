"""Models: the base models of the workspace, and importing new ones in the background."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

from appliance.models import import_model
from appliance.session import Session
from appliance.units import format_bytes, format_count
from gui.pages.base import Page
from gui.tasks import Progress, Task

COLUMNS = ("Name", "Architecture", "Parameters", "Context", "Chat template", "Size", "Imported")
_STAGES = {
    "checking": "Checking files",
    "hashing": "Hashing",
    "copying": "Copying",
    "converting": "Converting GGUF to safetensors",
    "saving": "Saving",
    "verifying": "Verifying",
}


class ModelsPage(Page):
    """Lists base models from the registry; imports run as background tasks."""

    title = "Models"
    purpose = (
        "Base models enter the workspace only as safetensors folders or GGUF files; pickle "
        "weights and remote code are refused."
    )
    imported = Signal(str)
    """The name of a model whose import finished."""

    def __init__(self, session: Session | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.task: Task | None = None

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
        self.progress.hide()
        self.body.addWidget(self.progress)
        self.body.addWidget(self.status)
        self.refresh()

    def models(self) -> list[dict[str, Any]]:
        if self.session is None:
            return []
        with self.session.registry() as reg:
            return reg.base_models()

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
        if self.session is None:
            self.status.setText("Unlock the workspace to see its models.")

    def names(self) -> list[str]:
        items = (self.table.item(r, 0) for r in range(self.table.rowCount()))
        return [item.text() for item in items if item is not None]

    def start_import(self, source: Path, name: str) -> Task:
        """Import ``source`` as ``name`` on a background task; the page shows its progress."""
        if self.session is None:
            raise RuntimeError("no unlocked workspace")
        if self.task is not None and self.task.running:
            raise RuntimeError("an import is already running")
        session = self.session

        def work(progress: Progress) -> dict[str, Any]:
            with session.registry() as reg:
                return import_model(session.ws, reg, source, name, progress=progress)

        self.task = Task(f"import of {name}", work, self)
        self.task.progress.connect(self._show_progress)
        self.task.succeeded.connect(self._import_done)
        self.task.failed.connect(self._import_failed)
        self._set_busy(True, f"Importing {name} from {source}…")
        self.task.start()
        return self.task

    def _set_busy(self, busy: bool, text: str) -> None:
        self.import_folder_button.setEnabled(not busy)
        self.import_gguf_button.setEnabled(not busy)
        self.progress.setVisible(busy)
        self.progress.setRange(0, 0)
        self.status.setStyleSheet("")
        self.status.setText(text)

    @Slot(int, int, str)
    def _show_progress(self, done: int, total: int, stage: str) -> None:
        if total > 0:
            # QProgressBar holds an int: count in KiB so multi-GB models fit.
            self.progress.setRange(0, max(1, total // 1024))
            self.progress.setValue(done // 1024)
        else:
            self.progress.setRange(0, 0)
        self.progress.setFormat(f"{_STAGES.get(stage, stage.capitalize())}: %p%")

    @Slot(object)
    def _import_done(self, model: dict[str, Any]) -> None:
        self._set_busy(False, f"Imported {model['name']} ({model['architecture']}).")
        self.refresh()
        self.imported.emit(model["name"])

    @Slot(str)
    def _import_failed(self, message: str) -> None:
        self._set_busy(False, f"Import failed: {message}")
        self.status.setStyleSheet("color: #b00020;")

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
