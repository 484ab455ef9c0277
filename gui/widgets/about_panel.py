"""About: the appliance's version, its main components' versions, every installed licence.

Read from installed metadata or the bundle's SBOM (:mod:`appliance.about`), never by
importing the packages (torch must never load in this process), and offline. Listing every
distribution takes a moment, so it runs on a background task.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QFormLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance import about
from gui.tasks import Progress, Task


class AboutPanel(QWidget):
    """Component versions (at once) and the licence table (filled by a task)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.versions: dict[str, str] = {}
        for name, version in about.component_versions():
            self.versions[name] = version
            label = QLabel(version)
            label.setObjectName(f"version_{name}")
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            form.addRow(f"{name}:", label)
        layout.addLayout(form)
        self.source = QLabel("Reading the licences of the installed packages…")
        self.source.setObjectName("licenceSource")
        self.source.setWordWrap(True)
        layout.addWidget(self.source)
        self.table = QTableWidget(0, 3)
        self.table.setObjectName("licences")
        self.table.setHorizontalHeaderLabels(["Distribution", "Version", "Licence"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(200)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout.addWidget(self.table)
        self.task: Task | None = None

    def load(self) -> Task:
        """Fill the licence table in the background."""

        def work(progress: Progress) -> tuple[list[about.Installed], str]:
            return about.licences()

        task = Task("reading licences", work, self)
        task.succeeded.connect(self._loaded)
        task.failed.connect(self.source.setText)
        self.task = task
        task.start()
        return task

    @Slot(object)
    def _loaded(self, result: tuple[list[about.Installed], str]) -> None:
        rows, where = result
        self.table.setRowCount(len(rows))
        for r, dist in enumerate(rows):
            for c, text in enumerate((dist.name, dist.version, dist.licence)):
                self.table.setItem(r, c, QTableWidgetItem(text))
        unknown = sum(1 for d in rows if d.licence == "unknown")
        note = f" ({unknown} without licence metadata: see their files)" if unknown else ""
        self.source.setText(f"{len(rows)} distributions, as recorded in {where}{note}.")
