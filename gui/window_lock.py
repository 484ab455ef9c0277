"""Lock now (menu, Ctrl+L) and auto-lock for the main window.

Locking, in this order: every page forgets what it shows and closes its dialogs
(:meth:`~gui.pages.base.Page.on_lock`), the window shows only the unlock screen, and once the
page's in-process tasks on the vault have stopped (they are cancelled; a few hundred
milliseconds at most) the master key is wiped
(:meth:`appliance.unlocked.UnlockedWorkspace.lock`). Child processes (trainings, jobs) hold their
own keys and go on. Unlocking asks for any key slot's passphrase and brings the pages back.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QApplication, QDialog, QMainWindow, QStackedWidget

from appliance.unlocked import UnlockedWorkspace
from gui.lock import IdleWatcher, LockScreen
from gui.pages.base import Page
from gui.tasks import Task

LOCK_SHORTCUT = "Ctrl+L"


class WindowLock(QObject):
    """Wraps the window's central widget in a stack whose other page is the unlock screen."""

    locked = Signal()
    """The window shows the unlock screen (the key may still be waiting to be wiped)."""
    key_dropped = Signal()
    """The master key is wiped."""
    unlocked = Signal()

    def __init__(
        self,
        window: QMainWindow,
        workspace: UnlockedWorkspace,
        pages: list[Page],
        minutes: int,
        extra_tasks: Callable[[], list[Task]] = list,
    ) -> None:
        super().__init__(window)
        self.window = window
        self.workspace = workspace
        self.pages = pages
        self.extra_tasks = extra_tasks
        self.is_locked = False
        self._waiting: list[Task] = []
        content = window.takeCentralWidget()
        if content is None:
            raise RuntimeError("the window has no central widget to lock")
        self.screen = LockScreen(workspace)
        self.screen.unlocked.connect(self._unlocked)
        self.stack = QStackedWidget()
        self.stack.addWidget(content)
        self.stack.addWidget(self.screen)
        window.setCentralWidget(self.stack)
        self.content = content

        self.action = QAction("Lock now", window)
        self.action.setShortcut(QKeySequence(LOCK_SHORTCUT))
        self.action.setStatusTip("Wipe the key from memory and hide everything until unlocked")
        self.action.triggered.connect(self.lock_now)
        window.addAction(self.action)
        menu = window.menuBar().addMenu("&Workspace")
        menu.addAction(self.action)

        self.idle = IdleWatcher(minutes * 60_000, self)
        self.idle.idle.connect(self.lock_now)
        self.idle.install()

    def set_minutes(self, minutes: int) -> None:
        """Auto-lock after ``minutes`` without input (0: never)."""
        self.idle.set_minutes(minutes)
        if self.is_locked:
            self.idle.pause()

    def vault_tasks(self) -> list[Task]:
        tasks = [t for page in self.pages for t in page.vault_tasks()] + self.extra_tasks()
        return [t for t in tasks if t.running]

    @Slot()
    def lock_now(self) -> None:
        """Hide everything, cancel in-process work on the vault, then wipe the key."""
        if self.is_locked:
            return
        self.is_locked = True
        self.idle.pause()
        self.action.setEnabled(False)
        pending = self.vault_tasks()  # before the pages close the dialogs that own some
        self._close_dialogs()
        for page in self.pages:
            page.on_lock()
        self.screen.reset()
        self.stack.setCurrentWidget(self.screen)
        self.locked.emit()
        self._waiting = [t for t in pending if t.running]
        if not self._waiting:
            self._drop_key()
            return
        self.screen.set_waiting(", ".join(sorted({t.name for t in self._waiting})))
        for task in self._waiting:
            task.done.connect(self._task_ended)

    def _close_dialogs(self) -> None:
        """Close the window's dialogs (confirmations, file choosers, full-text views)."""
        for widget in QApplication.topLevelWidgets():
            if not isinstance(widget, QDialog) or not widget.isVisible():
                continue
            parent = widget.parentWidget()
            while parent is not None and parent is not self.window:
                parent = parent.parentWidget()
            if parent is self.window:
                widget.reject()

    @Slot()
    def _task_ended(self) -> None:
        if (
            self.is_locked
            and self.workspace.locked is False
            and not any(t.running for t in self._waiting)
        ):
            self._drop_key()

    def _drop_key(self) -> None:
        self._waiting = []
        self.workspace.lock()
        self.screen.set_waiting("")
        self.key_dropped.emit()

    @Slot()
    def _unlocked(self) -> None:
        self.is_locked = False
        self.stack.setCurrentWidget(self.content)
        self.action.setEnabled(True)
        for page in self.pages:
            page.on_unlock()
        self.idle.resume()
        self.unlocked.emit()

    def shutdown(self) -> None:
        self.idle.pause()
        self.idle.uninstall()
