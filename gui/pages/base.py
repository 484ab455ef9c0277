"""The frame every page shares: a heading, a one-line purpose, and the page's own body."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

from gui.tasks import Task


class Page(QWidget):
    """A page of the main window. Subclasses fill :attr:`body`."""

    title: str = ""
    purpose: str = ""
    expanding: bool = False
    """The body takes the page's whole height (pages with tables and charts); otherwise the
    body sits at the top above empty space."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(f"page{self.title}")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 20)
        layout.setSpacing(8)
        heading = QLabel(self.title)
        heading.setObjectName("pageHeading")
        font = heading.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        heading.setFont(font)
        layout.addWidget(heading)
        purpose = QLabel(self.purpose)
        purpose.setWordWrap(True)
        purpose.setObjectName("pagePurpose")
        layout.addWidget(purpose)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        layout.addWidget(line)
        self.body = QVBoxLayout()
        self.body.setSpacing(6)
        layout.addLayout(self.body, 1 if self.expanding else 0)
        if not self.expanding:
            layout.addStretch(1)

    def on_lock(self) -> None:
        """The workspace was locked: forget every piece of data shown (rows, previews, names),
        close the page's dialogs and cancel its in-process work on the vault. Child processes
        (jobs, trainings) go on: they hold their own keys."""

    def on_unlock(self) -> None:
        """The workspace was unlocked again: show its data anew."""

    def vault_tasks(self) -> list[Task]:
        """In-process tasks of this page that use the vault now. On lock the window wipes the
        master key once they have ended (they are cancelled first)."""
        return []

    def add_note(self, text: str) -> QLabel:
        """Add a paragraph of rich text to the page body."""
        label = QLabel(text)
        label.setWordWrap(True)
        label.setTextFormat(Qt.TextFormat.RichText)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.addWidget(label)
        return label
