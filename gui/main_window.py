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

from appliance.demo import DEMO_MODEL_NAME, demo_model_gguf
from appliance.errors import ApplianceError
from appliance.session import Session
from appliance.training.runs import Outcome, try_reconcile
from gui.gpu_monitor import GpuMonitor
from gui.pages.base import Page
from gui.pages.jobs import DatasetsPage, ExportPage, RegistryPage
from gui.pages.models import ModelsPage
from gui.pages.settings import SettingsPage
from gui.pages.train import TrainPage
from gui.tasks import Progress, Task
from gui.widgets.gpu_status import GpuStatusLabel

_ICONS = {
    "Datasets": QStyle.StandardPixmap.SP_DriveHDIcon,
    "Models": QStyle.StandardPixmap.SP_DirIcon,
    "Train": QStyle.StandardPixmap.SP_MediaPlay,
    "Registry": QStyle.StandardPixmap.SP_FileDialogDetailedView,
    "Export": QStyle.StandardPixmap.SP_DialogSaveButton,
    "Settings": QStyle.StandardPixmap.SP_FileDialogInfoView,
}


class MainWindow(QMainWindow):
    """The appliance's window over the workspace at ``home``."""

    def __init__(
        self, home: Path, session: Session | None = None, monitor: GpuMonitor | None = None
    ) -> None:
        super().__init__()
        self.home = home
        self.session = session
        self.models_page = ModelsPage(session)
        self.train_page = TrainPage(session)
        self.setWindowTitle(f"Fine-tuning appliance — {home}")
        self.resize(1100, 700)
        self.pages: list[Page] = [
            DatasetsPage(),
            self.models_page,
            self.train_page,
            RegistryPage(),
            ExportPage(),
            SettingsPage(home),
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
        self.statusBar().addWidget(
            QLabel(
                f"Offline · unlocked as {session.vault.label}"
                if session is not None
                else "Offline · locked"
            )
        )
        self.monitor = monitor if monitor is not None else GpuMonitor(parent=self)
        self.monitor.updated.connect(self.gpu_label.show_state)
        self.monitor.updated.connect(self.train_page.show_gpus)
        self.models_page.imported.connect(lambda _name: self.train_page.refresh())
        self.train_page.close_ready.connect(self.close)

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
        if self.session is None or DEMO_MODEL_NAME in self.models_page.names():
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
        if self.session is None:
            return None
        session = self.session

        def work(progress: Progress) -> list[Outcome]:
            with session.registry() as reg:
                return try_reconcile(session.vault, reg)

        task = Task("settling runs", work, self)
        task.succeeded.connect(self._runs_settled)
        task.start()
        return task

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
        self.models_page.shutdown()
        self.monitor.stop()
        super().closeEvent(event)
