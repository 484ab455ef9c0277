"""Datasets: the versions in the workspace, what is in them, and the import wizard.

The list and each version's record come from the registry (milliseconds, on the GUI thread);
the rows of a version are decrypted in memory on a background task and shown in a table, never
written anywhere. Export and delete call the same core functions as ``appliance dataset export``
and ``dataset delete`` (the destination check, the audit row, lineage kept) on a background
task. A file dropped on the page opens the import wizard.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance import datasets
from appliance.progress import Progress
from appliance.unlocked import UnlockedWorkspace
from gui.pages.base import Page
from gui.style import ERROR_STYLE
from gui.tasks import Task, delete_when_done
from gui.widgets.import_wizard import ImportWizard
from gui.widgets.rows_table import RowsView
from gui.widgets.token_panel import TokenPanel

if TYPE_CHECKING:
    from appliance.registry.rows import DatasetVersionRow

PREVIEW_ROWS = 50
"""Rows of a version shown in the table (decrypted in memory)."""
DETAILS = (
    ("Format", "format"),
    ("Source file", "source_name"),
    ("Rows", "rows"),
    ("Train / eval", "split"),
    ("Duplicates removed", "duplicates_removed"),
    ("Invalid rows skipped", "skipped_rows"),
    ("Created", "created"),
    ("sha256", "sha256"),
    ("Adapters made from it", "adapters"),
)


def version_ref(version: DatasetVersionRow) -> str:
    return f"{version['name']}@{version['version']}"


def _detail(version: DatasetVersionRow, key: str, adapters: list[str]) -> str:
    if key == "format":
        return f"{version['format']} ({version['kind']})"
    if key == "split":
        return (
            f"{version['train_rows']:,} / {version['eval_rows']:,} "
            f"(eval share {version['eval_fraction']:g}, seed {version['seed']})"
        )
    if key == "created":
        by = f" by {version['created_by']}" if version.get("created_by") else ""
        return str(version["created_at"])[:19].replace("T", " ") + by
    if key == "adapters":
        return ", ".join(adapters) or "none yet"
    value = version.get(key)
    return f"{value:,}" if isinstance(value, int) else str(value or "-")


class DatasetsPage(Page):
    """Lists dataset versions; shows one's record, first rows and token statistics."""

    title = "Datasets"
    purpose = (
        "Import JSONL, JSON, CSV, TSV, Parquet or text files: every row is checked before "
        "anything is stored, and versions are kept encrypted. Rows are decrypted in memory "
        "only. Drop a file here to import it."
    )
    changed = Signal()
    """A version was stored, exported or deleted."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.versions: list[DatasetVersionRow] = []
        self.selected: DatasetVersionRow | None = None
        self.adapters: list[str] = []
        self.wizard: ImportWizard | None = None
        self.rows_task: Task | None = None
        self.action_task: Task | None = None
        self._selected_ref: str | None = None
        self._items: dict[str, QTreeWidgetItem] = {}
        self._generation = 0
        self._locking = False
        self.setAcceptDrops(True)

        buttons = QHBoxLayout()
        self.import_button = QPushButton("Import file…")
        self.import_button.clicked.connect(self._ask_file)
        self.export_button = QPushButton("Export version…")
        self.export_button.setToolTip("Write this version as plaintext JSONL to a file you choose")
        self.export_button.clicked.connect(self._ask_export)
        self.delete_version_button = QPushButton("Delete version…")
        self.delete_version_button.clicked.connect(self._ask_delete_version)
        self.delete_dataset_button = QPushButton("Delete dataset…")
        self.delete_dataset_button.clicked.connect(self._ask_delete_dataset)
        for button in (
            self.import_button,
            self.export_button,
            self.delete_version_button,
            self.delete_dataset_button,
        ):
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.body.addLayout(buttons)
        self.status = QLabel()
        self.status.setObjectName("datasetsStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.addWidget(self.status)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        self.tree = QTreeWidget()
        self.tree.setObjectName("datasetTree")
        self.tree.setHeaderLabels(["Dataset", "Rows"])
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setMinimumWidth(220)
        self.tree.currentItemChanged.connect(self._current_changed)
        splitter.addWidget(self.tree)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(6, 0, 0, 0)
        self.heading = QLabel()
        font = self.heading.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.2)
        self.heading.setFont(font)
        right_layout.addWidget(self.heading)
        grid = QGridLayout()
        grid.setHorizontalSpacing(12)
        grid.setVerticalSpacing(2)
        self.detail_labels: dict[str, QLabel] = {}
        wide = ("sha256", "adapters")
        short = [(label, key) for label, key in DETAILS if key not in wide]
        for i, (label, key) in enumerate(DETAILS):
            value = QLabel()
            value.setObjectName(f"detail_{key}")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            if key in wide:
                value.setWordWrap(True)
                row = (len(short) + 1) // 2 + wide.index(key)
                grid.addWidget(QLabel(f"{label}:"), row, 0)
                grid.addWidget(value, row, 1, 1, 3)
            else:
                row, col = divmod(i, 2)
                grid.addWidget(QLabel(f"{label}:"), row, col * 2)
                grid.addWidget(value, row, col * 2 + 1)
            self.detail_labels[key] = value
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        right_layout.addLayout(grid)
        inner = QSplitter(Qt.Orientation.Vertical)
        self.rows_view = RowsView()
        self.rows_view.setObjectName("previewRows")
        inner.addWidget(self.rows_view)
        self.tokens = TokenPanel(workspace)
        inner.addWidget(self.tokens)
        inner.setStretchFactor(0, 3)
        inner.setStretchFactor(1, 4)
        inner.setSizes([260, 360])
        right_layout.addWidget(inner, 1)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 800])
        self.body.addWidget(splitter, 1)
        # The page's body holds a splitter that should take the height, not the final stretch.
        outer = self.layout()
        if isinstance(outer, QVBoxLayout):
            outer.setStretch(outer.count() - 1, 0)
            outer.setStretchFactor(self.body, 1)
        self.refresh()

    # -- the list --------------------------------------------------------------------------------

    @property
    def unlocked(self) -> bool:
        """Whether the page may show data: the workspace is unlocked and the window is not being
        locked (the key waits for running tasks, whose results must not fill the page)."""
        return self.workspace is not None and not self.workspace.locked and not self._locking

    @Slot()
    def refresh(self) -> None:
        """Read the versions from the registry and keep the selection where it was."""
        if not self.unlocked or self.workspace is None:
            self._clear_all()
            if self.workspace is None:
                self.status.setText("Unlock the workspace to see its datasets.")
            return
        with self.workspace.registry() as reg:
            self.versions = reg.datasets.versions()
            models = [m["name"] for m in reg.models.all()]
        self.tokens.set_models(models)
        wanted = self._selected_ref
        self.tree.blockSignals(True)
        self.tree.clear()
        self._items = {}
        by_name: dict[str, QTreeWidgetItem] = {}
        chosen: QTreeWidgetItem | None = None
        for v in self.versions:
            parent = by_name.get(v["name"])
            if parent is None:
                parent = QTreeWidgetItem([v["name"], ""])
                parent.setData(0, Qt.ItemDataRole.UserRole, None)
                self.tree.addTopLevelItem(parent)
                by_name[v["name"]] = parent
            item = QTreeWidgetItem([f"version {v['version']}", f"{v['rows']:,}"])
            item.setData(0, Qt.ItemDataRole.UserRole, version_ref(v))
            item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            parent.addChild(item)
            self._items[version_ref(v)] = item
            parent.setText(1, f"{parent.childCount()} version{'s' * (parent.childCount() > 1)}")
            if version_ref(v) == wanted:
                chosen = item
        self.tree.expandAll()
        self.tree.resizeColumnToContents(0)
        self.tree.blockSignals(False)
        if chosen is None and self._items:
            chosen = list(self._items.values())[-1]
        if chosen is not None:
            self.tree.setCurrentItem(chosen)
            self._current_changed(chosen, None)
        else:
            self._show_version(None)
        if not self.versions:
            self.status.setText("No datasets yet: import a file, or drop one on this page.")
        self._update_buttons()

    @Slot()
    def refresh_models(self) -> None:
        """Offer the base models of the registry for token statistics (a model was imported)."""
        if self.unlocked and self.workspace is not None:
            with self.workspace.registry() as reg:
                self.tokens.set_models([m["name"] for m in reg.models.all()])

    def names(self) -> list[str]:
        return sorted({v["name"] for v in self.versions})

    def select(self, ref: str) -> None:
        """Select version ``name@version`` in the list (as a click would)."""
        item = self._items.get(ref)
        if item is None:
            raise KeyError(f"no version {ref} in the list (listed: {sorted(self._items)})")
        self.tree.setCurrentItem(item)

    @Slot(QTreeWidgetItem, QTreeWidgetItem)
    def _current_changed(self, item: QTreeWidgetItem | None, _previous: object) -> None:
        ref = item.data(0, Qt.ItemDataRole.UserRole) if item is not None else None
        if ref is None and item is not None and item.childCount():
            last = item.child(item.childCount() - 1)  # a dataset: its latest version
            ref = last.data(0, Qt.ItemDataRole.UserRole) if last is not None else None
        version = next((v for v in self.versions if version_ref(v) == ref), None)
        self._show_version(version)

    def _show_version(self, version: DatasetVersionRow | None) -> None:
        self._generation += 1
        self.rows_view.clear()
        self.selected = version
        self.adapters = []
        if version is None or not self.unlocked or self.workspace is None:
            self.heading.clear()
            for label in self.detail_labels.values():
                label.clear()
            self.tokens.set_dataset(None)
            self._update_buttons()
            return
        self._selected_ref = version_ref(version)
        with self.workspace.registry() as reg:
            made = reg.adapters.from_dataset(version["name"], version["version"])
        self.adapters = [a["ref"] for a in made]
        self.heading.setText(f"{version['name']}, version {version['version']}")
        for key, label in self.detail_labels.items():
            label.setText(_detail(version, key, self.adapters))
        self.tokens.set_dataset(version_ref(version))
        self.load_rows(version)
        self._update_buttons()

    def load_rows(self, version: DatasetVersionRow) -> Task | None:
        """Decrypt the version in memory (background) and show its first rows."""
        workspace = self.workspace
        if workspace is None or workspace.locked:
            return None
        generation = self._generation

        def work(_progress: Progress) -> list[tuple[str, dict[str, Any]]]:
            rows = datasets.load_rows(workspace.vault, version)
            return [(str(i + 1), row) for i, row in enumerate(rows[:PREVIEW_ROWS])]

        task = Task("decrypting the preview", work, self)
        task.succeeded.connect(lambda rows: self._rows_loaded(rows, generation))
        task.failed.connect(lambda message: self._rows_failed(message, generation))
        self.rows_task = task
        task.start()
        return task

    def _rows_loaded(self, rows: list[tuple[str, dict[str, Any]]], generation: int) -> None:
        if generation == self._generation and self.unlocked:
            self.rows_view.rows.set_rows(rows, "#")

    def _rows_failed(self, message: str, generation: int) -> None:
        if generation == self._generation and self.unlocked:
            self._error(f"Cannot show the rows: {message}")

    # -- import ----------------------------------------------------------------------------------

    def open_wizard(self, path: Path | None = None) -> ImportWizard | None:
        """Open the import wizard (on ``path`` when given)."""
        if not self.unlocked or self.workspace is None:
            return None
        if self.wizard is not None:
            self.wizard.abandon()
        wizard = ImportWizard(self.workspace, path, self.names(), self)
        wizard.stored.connect(self._stored)
        wizard.finished.connect(lambda _code, w=wizard: self._wizard_closed(w))
        self.wizard = wizard
        wizard.open()
        return wizard

    def _wizard_closed(self, wizard: ImportWizard) -> None:
        if self.wizard is wizard:
            self.wizard = None
        delete_when_done(wizard, wizard.running_tasks())

    @Slot()
    def _ask_file(self) -> None:
        from gui.widgets.import_wizard import FILE_FILTER

        path, _ = QFileDialog.getOpenFileName(self, "Dataset file", "", FILE_FILTER)
        if path:
            self.open_wizard(Path(path))

    @Slot(object)
    def _stored(self, version: DatasetVersionRow) -> None:
        self._selected_ref = version_ref(version)
        if not self.unlocked:
            return  # stored while the window was locking: shown after the unlock
        self.refresh()
        self._info(
            f"Imported {version['name']} version {version['version']}: {version['rows']:,} rows "
            f"({version['train_rows']:,} train, {version['eval_rows']:,} eval), "
            f"{version['duplicates_removed']:,} duplicates removed, "
            f"{version['skipped_rows']:,} invalid rows skipped."
        )
        self.changed.emit()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if self.unlocked and len(urls) == 1 and urls[0].isLocalFile():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        urls = event.mimeData().urls()
        if not urls or not urls[0].isLocalFile():
            event.ignore()
            return
        event.acceptProposedAction()
        self.drop_path(Path(urls[0].toLocalFile()))

    def drop_path(self, path: Path) -> ImportWizard | None:
        """What dropping ``path`` on the page does: the wizard reads it (and says what is wrong
        with a folder, a FIFO or a device: the core's message)."""
        return self.open_wizard(path)

    # -- export and delete -----------------------------------------------------------------------

    @Slot()
    def _ask_export(self) -> None:
        version = self.selected
        if version is None:
            return
        suggested = f"{version['name']}-v{version['version']}.jsonl"
        path, _ = QFileDialog.getSaveFileName(
            self, "Export as plaintext JSONL", suggested, "JSON lines (*.jsonl)"
        )
        if not path:
            return
        answer = QMessageBox.warning(
            self,
            "Export as plaintext",
            f"This writes {version['rows']:,} rows of {version['name']} version "
            f"{version['version']} unencrypted to\n{path}\n\nAnyone who can read that file can "
            "read the data. The export is recorded in the audit log.",
            QMessageBox.StandardButton.Ok | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Ok and self.unlocked:
            # The file dialog asked before replacing an existing file: as the CLI's --force,
            # which still only replaces an unchanged earlier export of this workspace.
            self.export(version, Path(path), force=Path(path).exists())

    def export(self, version: DatasetVersionRow, out: Path, *, force: bool = False) -> Task | None:
        """Write ``version`` as plaintext JSONL to ``out`` (audited), in the background."""
        workspace = self.workspace
        if workspace is None or workspace.locked or self.action_busy:
            return None
        ref = version_ref(version)

        def work(_progress: Progress) -> Path:
            with workspace.ws.writer("dataset export"), workspace.registry() as reg:
                current = datasets.resolve(reg, ref)
                return datasets.export_version(workspace.vault, reg, current, out, force=force)

        task = Task("exporting", work, self)
        task.succeeded.connect(
            lambda target: self._info(
                f"Exported {ref} ({version['rows']:,} rows) as plaintext to {target}; sha256 "
                f"{version['sha256']}."
            )
        )
        return self._run_action(task, f"Exporting {ref}…")

    def _confirm(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(
            self,
            title,
            text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Yes and self.unlocked

    def delete_question(self, name: str, version: int | None) -> str:
        """The confirmation text, naming the adapters made from what would be deleted."""
        targets = [
            v for v in self.versions if v["name"] == name and version in (None, v["version"])
        ]
        if self.workspace is None:
            return ""
        with self.workspace.registry() as reg:
            made = [a["ref"] for a in reg.adapters.from_dataset(name, version)]
        rows = sum(v["rows"] for v in targets)
        what = (
            f"dataset {name} version {version}"
            if version is not None
            else f"dataset {name} ({len(targets)} version{'s' * (len(targets) != 1)})"
        )
        text = f"Delete {what} ({rows:,} rows)? Its encrypted data is removed from the workspace."
        if made:
            text += (
                f"\n\nAdapters were made from it: {', '.join(made)}. They stay, and their lineage "
                "keeps the dataset's name and sha256, but the data cannot be read any more."
            )
        return text

    @Slot()
    def _ask_delete_version(self) -> None:
        version = self.selected
        if version is not None and self._confirm(
            "Delete version", self.delete_question(version["name"], version["version"])
        ):
            self.delete(version["name"], version["version"])

    @Slot()
    def _ask_delete_dataset(self) -> None:
        version = self.selected
        if version is not None and self._confirm(
            "Delete dataset", self.delete_question(version["name"], None)
        ):
            self.delete(version["name"], None)

    def delete(self, name: str, version: int | None) -> Task | None:
        """Delete one version, or every version of ``name`` (None), in the background."""
        workspace = self.workspace
        if workspace is None or workspace.locked or self.action_busy:
            return None

        def work(_progress: Progress) -> list[str]:
            done = []
            with workspace.ws.writer("dataset delete"), workspace.registry() as reg:
                if version is None:
                    targets = reg.datasets.versions(name)
                else:
                    targets = [datasets.resolve(reg, f"{name}@{version}")]
                for target in targets:
                    datasets.delete_version(workspace.vault, reg, target)
                    done.append(version_ref(target))
            return done

        task = Task("deleting", work, self)
        task.succeeded.connect(lambda refs: self._info(f"Deleted {', '.join(refs)}."))
        if self.selected is not None and self.selected["name"] == name:
            self._selected_ref = None
        return self._run_action(task, "Deleting…")

    @property
    def action_busy(self) -> bool:
        return self.action_task is not None and self.action_task.running

    def _run_action(self, task: Task, text: str) -> Task:
        task.failed.connect(self._error)
        task.done.connect(self._action_done)
        self.action_task = task
        self._info(text)
        self._update_buttons()
        task.start()
        return task

    @Slot()
    def _action_done(self) -> None:
        if self.unlocked:
            self.refresh()
            self.changed.emit()
        self._update_buttons()

    # -- messages and state ----------------------------------------------------------------------

    def _info(self, text: str) -> None:
        self.status.setStyleSheet("")
        self.status.setText(text)

    @Slot(str)
    def _error(self, text: str) -> None:
        if not self.unlocked:
            return
        self.status.setStyleSheet(ERROR_STYLE)
        self.status.setText(text)

    def _update_buttons(self) -> None:
        ready = self.unlocked and not self.action_busy
        self.import_button.setEnabled(self.unlocked)
        has = self.selected is not None and ready
        for button in (self.export_button, self.delete_version_button, self.delete_dataset_button):
            button.setEnabled(has)

    def _clear_all(self) -> None:
        self._generation += 1
        self.versions = []
        self._items = {}
        self.tree.clear()
        self._show_version(None)
        self.tokens.clear()
        self.status.clear()

    # -- lock ------------------------------------------------------------------------------------

    def on_lock(self) -> None:
        self._locking = True
        self.tokens.suspended = True
        if self.wizard is not None:
            self.wizard.abandon()
        self._clear_all()
        self.status.setStyleSheet("")
        self._update_buttons()

    def on_unlock(self) -> None:
        self._locking = False
        self.tokens.suspended = False
        self.refresh()

    def vault_tasks(self) -> list[Task]:
        tasks = [self.rows_task, self.action_task, self.tokens.task]
        if self.wizard is not None:
            tasks += self.wizard.running_tasks()
        return [t for t in tasks if t is not None and t.running]

    def shutdown(self) -> None:
        """Stop a running token count (the window is closing)."""
        self.tokens.shutdown()
