"""Locking the window: the idle watcher behind auto-lock, and the unlock screen.

Auto-lock counts *user input*: an application-wide event filter notes the time of every key,
mouse or touch event, and one single-shot timer fires when the idle time may have run out. When
it fires early (input came meanwhile) it is set again for the time that is left, so the filter
itself does nothing but store a number. A training that runs for hours is no input: the window
locks over it, and the training goes on.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QApplication,
    QFormLayout,
    QFrame,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from appliance.progress import Progress
from appliance.unlocked import UnlockedWorkspace
from gui.style import ERROR_STYLE
from gui.tasks import Task

INPUT_EVENTS = frozenset(
    {
        QEvent.Type.KeyPress,
        QEvent.Type.KeyRelease,
        QEvent.Type.MouseButtonPress,
        QEvent.Type.MouseButtonRelease,
        QEvent.Type.MouseButtonDblClick,
        QEvent.Type.MouseMove,
        QEvent.Type.Wheel,
        QEvent.Type.TouchBegin,
        QEvent.Type.TouchUpdate,
        QEvent.Type.TabletPress,
    }
)
"""The events that count as somebody at the keyboard."""


class IdleWatcher(QObject):
    """Emits :attr:`idle` after ``timeout_ms`` without user input anywhere in the application.

    Install it with :meth:`install`; ``timeout_ms`` 0 disables it.
    """

    idle = Signal()

    def __init__(self, timeout_ms: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._timeout_ms = 0
        self._last_input = time.monotonic()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._check)
        self._paused = False
        self.set_timeout_ms(timeout_ms)

    @property
    def timeout_ms(self) -> int:
        return self._timeout_ms

    @property
    def active(self) -> bool:
        """Whether an auto-lock is pending (enabled and not paused)."""
        return self._timer.isActive()

    def install(self) -> None:
        """Watch every event of the application (call once a QApplication exists)."""
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self)

    def uninstall(self) -> None:
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)

    def set_timeout_ms(self, timeout_ms: int) -> None:
        """Change the idle time; counting starts again from now. 0 disables auto-lock."""
        self._timeout_ms = max(0, int(timeout_ms))
        self.reset()

    def set_minutes(self, minutes: int) -> None:
        self.set_timeout_ms(minutes * 60_000)

    def pause(self) -> None:
        """Stop counting (the window is locked already)."""
        self._paused = True
        self._timer.stop()

    def resume(self) -> None:
        self._paused = False
        self.reset()

    def reset(self) -> None:
        """Count the idle time from now."""
        self._last_input = time.monotonic()
        if self._timeout_ms and not self._paused:
            self._timer.start(self._timeout_ms)
        else:
            self._timer.stop()

    def eventFilter(self, _watched: QObject, event: QEvent) -> bool:
        if event.type() in INPUT_EVENTS:
            self._last_input = time.monotonic()
        return False

    @Slot()
    def _check(self) -> None:
        if self._paused or not self._timeout_ms:
            return
        left_ms = self._timeout_ms - int((time.monotonic() - self._last_input) * 1000)
        if left_ms > 0:
            self._timer.start(left_ms)
            return
        self.idle.emit()


class LockScreen(QWidget):
    """What a locked window shows: the workspace, a passphrase field, and nothing else.

    The key derivation runs on a background task; a wrong passphrase is refused with the
    core's message.
    """

    unlocked = Signal()

    def __init__(self, workspace: UnlockedWorkspace, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("lockScreen")
        self.workspace = workspace
        self.task: Task | None = None
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        card = QFrame()
        card.setFrameShape(QFrame.Shape.StyledPanel)
        card.setFixedWidth(560)
        layout = QVBoxLayout(card)
        layout.setContentsMargins(28, 24, 28, 24)
        title = QLabel("Workspace locked")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        title.setFont(font)
        layout.addWidget(title)
        self.where = QLabel(str(workspace.ws.home))
        self.where.setWordWrap(True)
        self.where.setTextFormat(Qt.TextFormat.PlainText)
        self.where.setStyleSheet("color: #555;")
        layout.addWidget(self.where)
        self.info = QLabel()
        self.info.setObjectName("lockInfo")
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(self.info)
        form = QFormLayout()
        self.passphrase = QLineEdit()
        self.passphrase.setObjectName("unlockPassphrase")
        self.passphrase.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase.returnPressed.connect(self.submit)
        form.addRow("Passphrase:", self.passphrase)
        layout.addLayout(form)
        self.error = QLabel()
        self.error.setObjectName("unlockError")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.hide()
        layout.addWidget(self.error)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setTextVisible(False)
        self.busy.hide()
        layout.addWidget(self.busy)
        self.unlock_button = QPushButton("Unlock")
        self.unlock_button.setDefault(True)
        self.unlock_button.clicked.connect(self.submit)
        layout.addWidget(self.unlock_button, 0, Qt.AlignmentFlag.AlignRight)
        outer.addWidget(card, 0, Qt.AlignmentFlag.AlignHCenter)
        outer.addStretch(2)
        self.set_waiting("")

    def set_waiting(self, what: str) -> None:
        """``what``: the work the key waits for before it is wiped ("" once it is gone)."""
        if what:
            self.info.setText(f"Locking: waiting for {what} to stop before the key is wiped…")
        else:
            self.info.setText(
                "The key was wiped from memory; nothing of the workspace is shown. "
                "Trainings and jobs already running go on. Enter a passphrase of this "
                "workspace to go on working."
            )
        ready = not what and (self.task is None or not self.task.running)
        self.passphrase.setEnabled(ready)
        self.unlock_button.setEnabled(ready)
        if ready:
            self.passphrase.setFocus()

    def reset(self) -> None:
        self.passphrase.clear()
        self.error.hide()
        self.busy.hide()

    @Slot()
    def submit(self) -> None:
        """Derive the key in the background; on success the workspace is unlocked again."""
        if (self.task is not None and self.task.running) or not self.passphrase.isEnabled():
            return
        passphrase = self.passphrase.text()
        if not passphrase:
            self._show_error("Enter a passphrase.")
            return
        workspace = self.workspace

        def work(_progress: Progress) -> None:
            workspace.unlock(passphrase)

        self.task = Task("unlock", work, self)
        self.task.succeeded.connect(self._unlocked)
        self.task.failed.connect(self._failed)
        self.error.hide()
        self.busy.show()
        self.passphrase.setEnabled(False)
        self.unlock_button.setEnabled(False)
        self.task.start()

    def _show_error(self, message: str) -> None:
        self.error.setText(message)
        self.error.show()

    @Slot(object)
    def _unlocked(self, _result: object) -> None:
        self.busy.hide()
        self.reset()
        self.passphrase.setEnabled(True)
        self.unlock_button.setEnabled(True)
        self.unlocked.emit()

    @Slot(str)
    def _failed(self, message: str) -> None:
        self.busy.hide()
        self.passphrase.setEnabled(True)
        self.unlock_button.setEnabled(True)
        self._show_error(message)
        self.passphrase.selectAll()
        self.passphrase.setFocus()
