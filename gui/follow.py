"""Following what another process writes: a growing file, and that process's exit.

A run started from the command line (``appliance train --detach``), or kept training when the
window closed, has no pipe to this process: its events grow the run's ``metrics.jsonl`` and its
log grows ``train.log``. :class:`FileFollower` reads what is appended to such a file from a
given offset, woken by QFileSystemWatcher (inotify on Linux): file-change notifications, never a
timer. :class:`ProcessWatch` says when a process that is not our child ends, through a Linux
pidfd that becomes readable at its exit.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, QSocketNotifier, QTimer, Signal, Slot

from appliance.training.process import process_alive

READ_CHUNK = 1024 * 1024
"""The most one read takes in; a file far ahead is caught up chunk by chunk between events."""
LIVENESS_FALLBACK_MS = 2000
"""Where pidfds are missing (Linux before 5.3), how often the process's liveness is checked."""


class FileFollower(QObject):
    """Emits what is appended to ``path`` after ``offset``, as it is appended.

    Args:
        path: the file (it may not exist yet; it is picked up once it does and changes).
        offset: where to start reading, in bytes.
    """

    appended = Signal(bytes)
    """New bytes, in order, each time the file grew."""

    def __init__(self, path: Path, offset: int = 0, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = Path(path)
        self.offset = offset
        self._watcher = QFileSystemWatcher(self)
        self._watcher.fileChanged.connect(self._changed)
        self._watcher.directoryChanged.connect(self._changed)
        self._more = QTimer(self)
        self._more.setSingleShot(True)
        self._more.timeout.connect(self.read_new)
        self._active = False

    def start(self) -> None:
        """Watch the file and read what it holds beyond the offset already."""
        self._active = True
        self._watch()
        self.read_new()

    def stop(self) -> None:
        self._active = False
        self._more.stop()
        paths = self._watcher.files() + self._watcher.directories()
        if paths:
            self._watcher.removePaths(paths)

    @Slot()
    def read_new(self) -> int:
        """Read what was appended since the last read; how many bytes were read."""
        if not self._active:
            return 0
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self.offset:
                    self.offset = 0  # replaced by a new file: follow that from its start
                handle.seek(self.offset)
                data = handle.read(READ_CHUNK)
        except OSError:
            return 0  # not there (yet), or unreadable: the next change tries again
        if not data:
            return 0
        self.offset += len(data)
        if self.offset < size:
            self._more.start(0)  # the rest after the events queued meanwhile
        self.appended.emit(data)
        return len(data)

    def read_all(self) -> None:
        """Read everything there is now (before the end of a run: its last events)."""
        while self.read_new():
            pass

    def _watch(self) -> None:
        if self.path.exists():
            if str(self.path) not in self._watcher.files():
                self._watcher.addPath(str(self.path))
        elif self.path.parent.is_dir() and str(self.path.parent) not in self._watcher.directories():
            self._watcher.addPath(str(self.path.parent))  # to see the file appear

    @Slot(str)
    def _changed(self, _path: str) -> None:
        # A file replaced or removed drops out of the watch list: watch it again if it is back.
        self._watch()
        self.read_new()


class ProcessWatch(QObject):
    """Emits :attr:`exited` once the process ``pid`` has ended (it need not be our child).

    The pidfd tells the moment without polling; where the kernel has no pidfds, the process's
    liveness is checked every :data:`LIVENESS_FALLBACK_MS` instead.
    """

    exited = Signal()

    def __init__(self, pid: int, run_id: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pid = pid
        self.run_id = run_id
        self._fd: int | None = None
        self._notifier: QSocketNotifier | None = None
        self._timer: QTimer | None = None
        self._done = False

    def start(self) -> None:
        try:
            self._fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            QTimer.singleShot(0, self._finish)
            return
        except (OSError, AttributeError):
            self._timer = QTimer(self)
            self._timer.setInterval(LIVENESS_FALLBACK_MS)
            self._timer.timeout.connect(self._check)
            self._timer.start()
            return
        self._notifier = QSocketNotifier(self._fd, QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._finish)
        if not process_alive(self.pid, self.run_id):
            QTimer.singleShot(0, self._finish)  # the PID was reused, or it ended meanwhile

    def stop(self) -> None:
        self._done = True
        self._close()

    @Slot()
    def _check(self) -> None:
        if not process_alive(self.pid, self.run_id):
            self._finish()

    @Slot()
    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._close()
        self.exited.emit()

    def _close(self) -> None:
        if self._notifier is not None:
            self._notifier.setEnabled(False)
            self._notifier.deleteLater()
            self._notifier = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._timer is not None:
            self._timer.stop()
