"""The main window: navigation on the left, one page per job, GPU state in the status bar."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Slot
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QStackedWidget,
    QStyle,
    QWidget,
)

from appliance import preferences
from appliance.demo import DEMO_MODEL_NAME, demo_model_gguf
from appliance.errors import ApplianceError
from appliance.progress import Progress
from appliance.training.runs import Outcome, try_reconcile
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import Workspace
from gui.gpu_monitor import GpuMonitor
from gui.pages.base import Page
from gui.pages.datasets import DatasetsPage
from gui.pages.export import ExportPage
from gui.pages.models import ModelsPage
from gui.pages.playground import PlaygroundPage
from gui.pages.registry import RegistryPage
from gui.pages.settings import SettingsPage
from gui.pages.train import TrainPage
from gui.style import ERROR_STYLE
from gui.tasks import Task
from gui.widgets.gpu_status import GpuStatusLabel
from gui.window_lock import WindowLock

_ICONS = {
    "Datasets": QStyle.StandardPixmap.SP_DriveHDIcon,
    "Models": QStyle.StandardPixmap.SP_DirIcon,
    "Train": QStyle.StandardPixmap.SP_MediaPlay,
    "Playground": QStyle.StandardPixmap.SP_FileDialogContentsView,
    "Registry": QStyle.StandardPixmap.SP_FileDialogDetailedView,
    "Export": QStyle.StandardPixmap.SP_DialogSaveButton,
    "Settings": QStyle.StandardPixmap.SP_FileDialogInfoView,
}


class MainWindow(QMainWindow):
    """The appliance's window over the workspace at ``home``."""

    def __init__(
        self,
        home: Path,
        workspace: UnlockedWorkspace | None = None,
        monitor: GpuMonitor | None = None,
    ) -> None:
        super().__init__()
        self.home = home
        self.workspace = workspace
        self.models_page = ModelsPage(workspace)
        self.train_page = TrainPage(workspace)
        self.datasets_page = DatasetsPage(workspace)
        self.settings_page = SettingsPage(home, workspace)
        self.registry_page = RegistryPage(workspace)
        self.export_page = ExportPage(workspace)
        self.playground_page = PlaygroundPage(workspace)
        self.settle_task: Task | None = None
        self.models_page.imported.connect(self.datasets_page.refresh_models)
        self.models_page.imported.connect(self.playground_page.refresh)
        self.playground_page.saved.connect(lambda _version: self.datasets_page.refresh())
        self.setWindowTitle(f"Fine-tuning appliance — {home}")
        self.resize(1100, 700)
        self.pages: list[Page] = [
            self.datasets_page,
            self.models_page,
            self.train_page,
            self.playground_page,
            self.registry_page,
            self.export_page,
            self.settings_page,
        ]
        self.nav = QListWidget()
        self.nav.setObjectName("navigation")
        self.nav.setIconSize(QSize(20, 20))
        self.nav.setFixedWidth(180)
        self.nav.setStyleSheet(
            "QListWidget#navigation { font-size: 11pt; padding-top: 8px; }"
            "QListWidget#navigation::item { padding: 8px 6px; }"
        )
        self.stack = QStackedWidget()
        for page in self.pages:
            icon = self.style().standardIcon(_ICONS[page.title])
            self.nav.addItem(QListWidgetItem(icon, page.title))
            self.stack.addWidget(page)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.nav.setCurrentRow(0)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.nav)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.gpu_label = GpuStatusLabel()
        self.statusBar().addPermanentWidget(self.gpu_label)
        self.lock_label = QLabel("Offline · locked")
        if workspace is not None:
            self._show_unlocked(workspace.vault)
        self.statusBar().addWidget(self.lock_label)
        self.locker: WindowLock | None = None
        if workspace is not None:
            self.locker = WindowLock(
                self, workspace, self.pages, _auto_lock_minutes(home), self._own_vault_tasks
            )
            self.locker.locked.connect(self._show_locked)
            self.locker.unlocked.connect(lambda: self._show_unlocked(workspace.vault))
            self.settings_page.auto_lock_changed.connect(self.locker.set_minutes)
        self.monitor = monitor if monitor is not None else GpuMonitor(parent=self)
        self.monitor.updated.connect(self.gpu_label.show_state)
        self.monitor.updated.connect(self.train_page.show_gpus)
        self.settings_page.training_gpus_changed.connect(self.train_page.setup.set_training_gpus)
        self.models_page.imported.connect(lambda _name: self.train_page.refresh())
        self.train_page.close_ready.connect(self.close)
        self._connect_registry_and_export()

    def _connect_registry_and_export(self) -> None:
        """The Registry page hands a version to the Export page and opens what a lineage
        names; an export (or an import) changes what the Registry page lists."""
        registry, export = self.registry_page, self.export_page
        registry.export_requested.connect(self.export_version)
        registry.open_dataset.connect(lambda _ref: self.show_page("Datasets"))
        registry.open_run.connect(self.open_run)
        registry.open_model.connect(lambda _name: self.show_page("Models"))
        export.exported.connect(lambda _ref: registry.refresh())
        # The lineage lists evaluations: one stored from the Playground shows there at once.
        self.playground_page.eval_runner.evaluated.connect(lambda _result: registry.refresh())

    def open_run(self, run_id: str) -> None:
        """Open the Train page with run ``run_id`` shown (a lineage names it)."""
        self.show_page("Train")
        self.train_page.show_run(run_id)

    def export_version(self, ref: str) -> None:
        """Open the Export page with adapter version ``ref`` chosen."""
        self.export_page.choose(ref)
        self.show_page("Export")

    def page_titles(self) -> list[str]:
        return [page.title for page in self.pages]

    def show_page(self, title: str) -> Page:
        """Switch to the page called ``title`` (as the navigation would) and return it."""
        index = self.page_titles().index(title)
        self.nav.setCurrentRow(index)
        return self.pages[index]

    def ensure_demo_model(self) -> bool:
        """Import the bundled demo model (a child process) if the workspace lacks it.

        Returns:
            Whether an import was started.
        """
        if self.workspace is None or DEMO_MODEL_NAME in self.models_page.names():
            return False
        try:
            source = demo_model_gguf()
        except ApplianceError as exc:
            self.statusBar().showMessage(f"Demo model unavailable: {exc}")
            return False
        if self.models_page.busy:
            return False
        job = self.models_page.start_import(source, DEMO_MODEL_NAME)
        self.statusBar().showMessage("Preparing the demo model SmolLM2-135M-Instruct…")
        job.succeeded.connect(lambda _: self.statusBar().showMessage("Demo model ready", 10_000))
        job.failed.connect(lambda msg: self.statusBar().showMessage(f"Demo model: {msg}"))
        return True

    def settle_runs(self) -> Task | None:
        """Settle, in the background, runs marked running whose training process is gone.

        A run never stays "running" after a crash or a reboot: a finished one gets its adapter
        registered, the others become stopped or failed with the reason.
        """
        if self.workspace is None:
            return None
        workspace = self.workspace

        def work(_progress: Progress) -> list[Outcome]:
            with workspace.registry() as reg:
                return try_reconcile(workspace.vault, reg)

        task = Task("settling runs", work, self)
        task.succeeded.connect(self._runs_settled)
        self.settle_task = task
        task.start()
        return task

    def lock_now(self) -> None:
        """Lock the workspace (what the Lock now action does)."""
        if self.locker is not None:
            self.locker.lock_now()

    def _show_unlocked(self, vault: Vault) -> None:
        self.lock_label.setText(f"Offline · unlocked as {vault.label}")
        self.lock_label.setToolTip("")
        self.lock_label.setStyleSheet("")
        if vault.warnings:
            # A damaged key slot locks its owner out: whoever unlocks should hear about it.
            self.lock_label.setText(
                f"{self.lock_label.text()} · {len(vault.warnings)} damaged key slot(s) skipped"
            )
            self.lock_label.setToolTip("\n\n".join(vault.warnings))
            self.lock_label.setStyleSheet(ERROR_STYLE)

    def _show_locked(self) -> None:
        self.lock_label.setText("Offline · locked")
        self.lock_label.setToolTip("")
        self.lock_label.setStyleSheet("")

    def _own_vault_tasks(self) -> list[Task]:
        return [self.settle_task] if self.settle_task is not None else []

    @Slot(object)
    def _runs_settled(self, outcomes: list[Outcome]) -> None:
        if outcomes:
            self.train_page.refresh()
            states = ", ".join(f"{o.run_id}: {o.state}" for o in outcomes)
            self.statusBar().showMessage(f"Runs whose process had ended were settled ({states})")

    def closeEvent(self, event: QCloseEvent) -> None:
        # A run in progress: keep it training in the background, stop it, or stay open.
        if not self.train_page.may_close():
            event.ignore()
            return
        self.train_page.shutdown()
        if self.locker is not None:
            self.locker.shutdown()
        self.models_page.shutdown()
        self.datasets_page.shutdown()
        self.export_page.shutdown()
        self.registry_page.shutdown()
        self.playground_page.shutdown()
        self.monitor.stop()
        super().closeEvent(event)


def _auto_lock_minutes(home: Path) -> int:
    """The workspace's auto-lock setting (the default where its settings file is damaged)."""
    try:
        return preferences.load(Workspace(home)).auto_lock_minutes
    except ApplianceError:
        return preferences.Preferences().auto_lock_minutes
