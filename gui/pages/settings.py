"""Settings: the workspace in use, the no-egress guard and the versions of this install."""

from __future__ import annotations

from html import escape
from pathlib import Path

from PySide6.QtWidgets import QFormLayout, QLabel, QWidget

from appliance import __version__, offline
from appliance.errors import ApplianceError
from appliance.workspace import open_workspace
from gui.pages.base import Page


class SettingsPage(Page):
    title = "Settings"
    purpose = "Where the appliance keeps its data, and the guarantees in force in this window."

    def __init__(self, home: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.home = home
        form = QFormLayout()
        self.workspace_label = QLabel()
        self.workspace_label.setWordWrap(True)
        self.state_label = QLabel()
        self.state_label.setWordWrap(True)
        self.egress_label = QLabel()
        form.addRow("Workspace:", self.workspace_label)
        form.addRow("State:", self.state_label)
        form.addRow("Network:", self.egress_label)
        form.addRow("Version:", QLabel(f"appliance {__version__}"))
        self.body.addLayout(form)
        self.refresh()

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
