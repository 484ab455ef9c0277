"""Settings: the workspace and its size, passphrases and key slots, auto-lock, GPUs, About.

Every change goes through the core with the CLI's rules and messages: key slots through
:mod:`appliance.passphrases` (writer lock, audit row, never the last slot), auto-lock and the
training GPUs through :mod:`appliance.preferences` (``HOME/settings.json``, which the Train page
reads). Anything slower than a glance (the size walk, NVML, the licence list, a key derivation)
runs on a background task.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance import __version__, offline, preferences
from appliance.errors import ApplianceError
from appliance.gpu import GpuState, read_gpus
from appliance.passphrases import change_passphrase, remove_key_slot
from appliance.progress import Progress
from appliance.units import format_bytes
from appliance.unlocked import UnlockedWorkspace
from appliance.usage import Usage, disk_usage
from appliance.vault import DEFAULT_TARGET_S, KeySlot, keyslots
from appliance.workspace import Workspace, open_workspace
from gui.pages.base import Page
from gui.style import ERROR_STYLE
from gui.tasks import Task, delete_when_done
from gui.widgets.about_panel import AboutPanel
from gui.widgets.new_passphrase import NewPassphraseDialog, sentence
from gui.widgets.second_slot import add_slot_dialog


def _table(columns: list[str], object_name: str) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setObjectName(object_name)
    table.setHorizontalHeaderLabels(columns)
    table.verticalHeader().hide()
    table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setStretchLastSection(True)
    return table


def fit_rows(table: QTableWidget, at_least: int = 1) -> None:
    """Make ``table`` exactly as tall as its rows (no empty space, no scrolling)."""
    rows = max(table.rowCount(), at_least)
    height = table.horizontalHeader().height() + 2 * table.frameWidth()
    height += sum(table.rowHeight(r) for r in range(table.rowCount()))
    height += (rows - table.rowCount()) * table.verticalHeader().defaultSectionSize()
    table.setFixedHeight(height + 2)


class SettingsPage(Page):
    title = "Settings"
    purpose = (
        "Where the appliance keeps its data and how much room it takes, who can open it, when "
        "it locks itself, which GPUs training may use, and what is installed."
    )
    auto_lock_changed = Signal(int)
    """The auto-lock minutes were changed (0: never)."""
    training_gpus_changed = Signal(object)
    """The GPUs training may use were changed: a tuple of indices, or None for every GPU."""

    def __init__(
        self, home: Path, workspace: UnlockedWorkspace | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.home = home
        self.workspace = workspace
        self.kdf_target_s = DEFAULT_TARGET_S
        """Argon2id time of new key slots (tests lower it)."""
        self.usage_task: Task | None = None
        self.gpu_task: Task | None = None
        self.slot_task: Task | None = None
        self.dialog: NewPassphraseDialog | None = None
        self.gpu_boxes: dict[int, QCheckBox] = {}
        self._locking = False

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 8, 0)
        scroll.setWidget(content)
        self.body.addWidget(scroll, 1)
        outer = self.layout()
        if isinstance(outer, QVBoxLayout):
            outer.setStretch(outer.count() - 1, 0)
            outer.setStretchFactor(self.body, 1)

        # -- workspace ---------------------------------------------------------------------------
        box = QGroupBox("Workspace")
        form = QFormLayout(box)
        self.workspace_label = QLabel()
        self.workspace_label.setWordWrap(True)
        self.workspace_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.state_label = QLabel()
        self.state_label.setWordWrap(True)
        self.egress_label = QLabel()
        form.addRow("Location:", self.workspace_label)
        form.addRow("State:", self.state_label)
        form.addRow("Network:", self.egress_label)
        usage_row = QHBoxLayout()
        self.usage_label = QLabel()
        self.usage_label.setObjectName("usageTotal")
        usage_row.addWidget(self.usage_label, 1)
        self.usage_button = QPushButton("Recount")
        self.usage_button.clicked.connect(self.measure_usage)
        usage_row.addWidget(self.usage_button)
        form.addRow("Size on disk:", usage_row)
        self.usage_table = _table(["Kind", "Size", "Files"], "usageTable")
        self.usage_table.horizontalHeader().setStretchLastSection(False)
        self.usage_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        fit_rows(self.usage_table, 3)
        form.addRow(self.usage_table)
        column.addWidget(box)

        # -- passphrases -------------------------------------------------------------------------
        box = QGroupBox("Passphrases and key slots")
        layout = QVBoxLayout(box)
        note = QLabel(
            "Each key slot is one passphrase that opens this workspace (a person, or one kept in "
            "a safe). Changing yours rewrites only your slot: no data is re-encrypted."
        )
        note.setWordWrap(True)
        layout.addWidget(note)
        self.slots_table = _table(["Key slot", "Created", "Key derivation"], "slotsTable")
        fit_rows(self.slots_table, 2)
        layout.addWidget(self.slots_table)
        buttons = QHBoxLayout()
        self.change_button = QPushButton("Change my passphrase…")
        self.change_button.clicked.connect(self.open_change_dialog)
        self.add_button = QPushButton("Add a key slot…")
        self.add_button.clicked.connect(self.open_add_dialog)
        self.remove_button = QPushButton("Remove key slot…")
        self.remove_button.clicked.connect(self._ask_remove)
        for button in (self.change_button, self.add_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.slots_status = QLabel()
        self.slots_status.setObjectName("slotsStatus")
        self.slots_status.setWordWrap(True)
        layout.addWidget(self.slots_status)
        column.addWidget(box)

        # -- auto-lock ----------------------------------------------------------------------------
        box = QGroupBox("Auto-lock")
        row = QHBoxLayout(box)
        row.addWidget(QLabel("Lock after"))
        self.auto_lock = QSpinBox()
        self.auto_lock.setObjectName("autoLockMinutes")
        self.auto_lock.setRange(0, preferences.MAX_AUTO_LOCK_MINUTES)
        self.auto_lock.setSuffix(" min")
        self.auto_lock.setSpecialValueText("never")
        row.addWidget(self.auto_lock)
        row.addWidget(
            QLabel("without keyboard or mouse input (0: never). Lock now: Ctrl+L. Trainings go on.")
        )
        row.addStretch(1)
        column.addWidget(box)

        # -- GPUs --------------------------------------------------------------------------------
        box = QGroupBox("GPUs")
        self.gpu_layout = QVBoxLayout(box)
        self.gpu_label = QLabel("Reading the GPUs (NVML)…")
        self.gpu_label.setObjectName("gpuSummary")
        self.gpu_label.setWordWrap(True)
        self.gpu_layout.addWidget(self.gpu_label)
        column.addWidget(box)

        # -- about -------------------------------------------------------------------------------
        box = QGroupBox(f"About: finetune-appliance {__version__}")
        layout = QVBoxLayout(box)
        self.about = AboutPanel()
        layout.addWidget(self.about)
        column.addWidget(box)
        column.addStretch(1)

        self.settings_error = QLabel()
        self.settings_error.setStyleSheet(ERROR_STYLE)
        self.settings_error.setWordWrap(True)
        self.settings_error.hide()
        self.body.addWidget(self.settings_error)
        self._load_preferences()
        self.auto_lock.valueChanged.connect(self._auto_lock_edited)
        self.refresh()
        self.measure_usage()
        self.read_gpus()
        self.about.load()

    @property
    def ws(self) -> Workspace:
        return Workspace(self.home)

    # -- workspace -------------------------------------------------------------------------------

    def refresh(self) -> None:
        self.workspace_label.setText(str(self.home))
        try:
            info = open_workspace(self.home).info()
            self.state_label.setText(
                f"ready (format {info.get('format')}, created {info.get('created')})"
            )
        except ApplianceError as exc:
            self.state_label.setText(f"<span>{escape(str(exc))}</span>")
        self.egress_label.setText(
            "offline: every connection off this machine is refused"
            if offline.is_enforced()
            else "WARNING: the no-egress guard is not active in this process"
        )
        self.refresh_slots()

    def showEvent(self, event: QShowEvent) -> None:
        """Count again each time the page is shown: imports and runs change the sizes."""
        super().showEvent(event)
        if self.usage_task is not None and not self.usage_task.running:
            self.measure_usage()

    @Slot()
    def measure_usage(self) -> Task:
        """Walk the workspace in the background and fill the size table."""
        ws = self.ws

        def work(progress: Progress) -> list[Usage]:
            return disk_usage(ws, progress)

        task = Task("measuring the workspace", work, self)
        task.succeeded.connect(self._usage_measured)
        task.failed.connect(self.usage_label.setText)
        self.usage_task = task
        self.usage_button.setEnabled(False)
        self.usage_label.setText("Counting…")
        task.done.connect(lambda: self.usage_button.setEnabled(True))
        task.start()
        return task

    @Slot(object)
    def _usage_measured(self, usage: list[Usage]) -> None:
        shown = [u for u in usage if u.files]
        self.usage_table.setRowCount(len(shown))
        for r, u in enumerate(shown):
            cells = (u.label, format_bytes(u.bytes), f"{u.files:,}")
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.usage_table.setItem(r, c, item)
        fit_rows(self.usage_table)
        total = sum(u.bytes for u in usage)
        self.usage_label.setText(f"{format_bytes(total)} in {sum(u.files for u in usage):,} files")

    # -- key slots -------------------------------------------------------------------------------

    @property
    def unlocked(self) -> bool:
        return self.workspace is not None and not self.workspace.locked and not self._locking

    def refresh_slots(self) -> None:
        """List the key slots (their files only: no passphrase needed)."""
        try:
            slots: list[KeySlot] = keyslots.read_slots(self.ws) if self.unlocked else []
        except ApplianceError as exc:
            slots = []
            self._slots_message(str(exc), error=True)
        mine = self.workspace.vault.label if self.unlocked and self.workspace else None
        self.slots_table.setRowCount(len(slots))
        for r, slot in enumerate(slots):
            label = f"{slot.label} (you)" if slot.label == mine else slot.label
            kdf = slot.kdf
            cells = (
                label,
                slot.created_at.replace("T", " ")[:19],
                f"Argon2id, {kdf.memory_kib // 1024} MiB × {kdf.iterations}, {kdf.lanes} lanes",
            )
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, slot.label)
                self.slots_table.setItem(r, c, item)
        fit_rows(self.slots_table, 2)
        for button in (self.change_button, self.add_button, self.remove_button):
            button.setEnabled(self.unlocked)

    def slot_labels(self) -> list[str]:
        items = (self.slots_table.item(r, 0) for r in range(self.slots_table.rowCount()))
        return [str(i.data(Qt.ItemDataRole.UserRole)) for i in items if i is not None]

    def _slots_message(self, text: str, *, error: bool = False) -> None:
        self.slots_status.setStyleSheet(ERROR_STYLE if error else "")
        self.slots_status.setText(sentence(text) if error else text)

    @Slot()
    def open_change_dialog(self) -> NewPassphraseDialog | None:
        """Ask for a new passphrase for the slot this workspace was unlocked with."""
        if not self.unlocked or self.workspace is None:
            return None
        vault = self.workspace.vault
        target = self.kdf_target_s

        def change(_label: str, passphrase: str) -> KeySlot:
            return change_passphrase(vault, passphrase, target)

        dialog = NewPassphraseDialog(
            "Change your passphrase",
            f"A new passphrase for key slot <b>{escape(vault.label)}</b>. The old one stops "
            "opening the workspace; other people's slots do not change, and no data is "
            "re-encrypted.",
            change,
            ok_text="Change passphrase",
            parent=self,
        )
        dialog.accepted.connect(
            lambda: self._slot_changed(f"Changed the passphrase of key slot '{vault.label}'.")
        )
        return self._open(dialog)

    @Slot()
    def open_add_dialog(self) -> NewPassphraseDialog | None:
        """Ask for the name and passphrase of a new key slot."""
        if not self.unlocked or self.workspace is None:
            return None
        dialog = add_slot_dialog(self.workspace.vault, self, self.kdf_target_s)
        dialog.accepted.connect(
            lambda: self._slot_changed(f"Added key slot '{dialog.result_value.label}'.")
        )
        return self._open(dialog)

    def _open(self, dialog: NewPassphraseDialog) -> NewPassphraseDialog:
        if self.dialog is not None:
            self.dialog.reject()
        self.dialog = dialog
        dialog.finished.connect(lambda _code: self._dispose(dialog))
        dialog.open()
        return dialog

    def _dispose(self, dialog: NewPassphraseDialog) -> None:
        if self.dialog is dialog:
            self.dialog = None
        delete_when_done(dialog, [dialog.task] if dialog.task is not None else [])

    def _slot_changed(self, message: str) -> None:
        self.dialog = None
        self.refresh_slots()
        self._slots_message(message)

    def remove_question(self, label: str) -> str:
        mine = self.workspace is not None and self.unlocked and label == self.workspace.vault.label
        text = f"Remove key slot '{label}'? Its passphrase will stop opening this workspace."
        if mine:
            text += " It is the slot you unlocked with: keep another passphrase at hand."
        return text

    @Slot()
    def _ask_remove(self) -> None:
        rows = self.slots_table.selectionModel().selectedRows()
        if not rows:
            self._slots_message("Select the key slot to remove in the list first.")
            return
        label = self.slot_labels()[rows[0].row()]
        answer = QMessageBox.question(
            self,
            "Remove key slot",
            self.remove_question(label),
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.remove_slot(label)

    def remove_slot(self, label: str) -> Task | None:
        """Remove key slot ``label`` (confirmed already) in the background."""
        if not self.unlocked or self.workspace is None:
            return None
        vault = self.workspace.vault

        def work(_progress: Progress) -> None:
            remove_key_slot(vault, label)

        task = Task("removing a key slot", work, self)
        task.succeeded.connect(lambda _: self._slot_changed(f"Removed key slot '{label}'."))
        task.failed.connect(lambda message: self._slots_message(message, error=True))
        self.slot_task = task
        task.start()
        return task

    # -- preferences -----------------------------------------------------------------------------

    def _load_preferences(self) -> preferences.Preferences:
        try:
            prefs = preferences.load(self.ws)
        except ApplianceError as exc:
            self._settings_error(str(exc))
            prefs = preferences.Preferences()
        self.auto_lock.setValue(prefs.auto_lock_minutes)
        return prefs

    def _settings_error(self, message: str) -> None:
        self.settings_error.setText(sentence(message))
        self.settings_error.setVisible(bool(message))

    @Slot(int)
    def _auto_lock_edited(self, minutes: int) -> None:
        try:
            preferences.update(self.ws, auto_lock_minutes=minutes)
        except (ApplianceError, OSError) as exc:
            self._settings_error(str(exc))
            return
        self._settings_error("")
        self.auto_lock_changed.emit(minutes)

    # -- GPUs ------------------------------------------------------------------------------------

    def read_gpus(self) -> Task:
        """Read the GPUs through NVML in the background (never CUDA)."""

        def work(_progress: Progress) -> GpuState:
            return read_gpus()

        task = Task("reading GPUs", work, self)
        task.succeeded.connect(self.show_gpus)
        self.gpu_task = task
        task.start()
        return task

    @Slot(object)
    def show_gpus(self, state: GpuState) -> None:
        """List the GPUs NVML sees, each with whether training may use it."""
        for box in self.gpu_boxes.values():
            self.gpu_layout.removeWidget(box)
            box.deleteLater()
        self.gpu_boxes = {}
        where = preferences.settings_path(self.ws)
        if not state.available:
            self.gpu_label.setText(
                f"No NVIDIA GPU found ({state.unavailable_reason or 'no devices'}): training "
                "runs on the CPU."
            )
            return
        try:
            prefs = preferences.load(self.ws)
        except ApplianceError as exc:
            self._settings_error(str(exc))
            prefs = preferences.Preferences()
        self.gpu_label.setText(
            f"Training may use the ticked GPUs (driver {state.driver_version}; the choice is "
            f"kept in {where})."
        )
        for gpu in state.gpus:
            box = QCheckBox(
                f"GPU {gpu.index}: {gpu.name}, {format_bytes(gpu.memory_total)} "
                f"({format_bytes(gpu.memory_used)} in use now)"
            )
            box.setObjectName(f"gpu{gpu.index}")
            box.setChecked(prefs.allows_gpu(gpu.index))
            box.toggled.connect(self._gpus_edited)
            self.gpu_layout.addWidget(box)
            self.gpu_boxes[gpu.index] = box

    @Slot()
    def _gpus_edited(self) -> None:
        chosen = tuple(i for i, box in sorted(self.gpu_boxes.items()) if box.isChecked())
        allowed = None if len(chosen) == len(self.gpu_boxes) else chosen
        try:
            preferences.update(self.ws, training_gpus=allowed)
        except (ApplianceError, OSError) as exc:
            self._settings_error(str(exc))
            return
        self._settings_error("")
        self.training_gpus_changed.emit(allowed)

    # -- lock ------------------------------------------------------------------------------------

    def on_lock(self) -> None:
        self._locking = True
        if self.dialog is not None:
            self.dialog.reject()  # a derivation under way finishes first (see vault_tasks)
        self.slots_table.setRowCount(0)
        self.slots_status.clear()
        for button in (self.change_button, self.add_button, self.remove_button):
            button.setEnabled(False)

    def on_unlock(self) -> None:
        self._locking = False
        self.refresh_slots()

    def vault_tasks(self) -> list[Task]:
        tasks = [self.slot_task]
        if self.dialog is not None:
            tasks.append(self.dialog.task)
        return [t for t in tasks if t is not None and t.running]
