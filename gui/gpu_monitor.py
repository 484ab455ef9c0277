"""Polls NVML once a second on a worker thread and publishes readings as a Qt signal."""

from __future__ import annotations

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from appliance.gpu import GpuState, NvmlReader


class _Poller(QObject):
    """Lives on the monitor's thread; every NVML call happens there, never on the GUI thread."""

    reading = Signal(object)

    def __init__(self, interval_ms: int) -> None:
        super().__init__()
        self._interval_ms = interval_ms
        self._reader = NvmlReader()
        self._timer: QTimer | None = None

    @Slot()
    def start(self) -> None:
        self._reader.open()
        self._timer = QTimer(self)
        self._timer.setInterval(self._interval_ms)
        self._timer.timeout.connect(self.poll)
        self._timer.start()
        self.poll()

    @Slot()
    def poll(self) -> None:
        self.reading.emit(self._reader.read())

    @Slot()
    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._reader.close()


class GpuMonitor(QObject):
    """Publishes :class:`~appliance.gpu.GpuState` through :attr:`updated` every ``interval_ms``.

    Views subscribe to :attr:`updated`; they never call NVML themselves.
    """

    updated = Signal(object)

    def __init__(self, interval_ms: int = 1000, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.last: GpuState | None = None
        self._thread = QThread()
        self._thread.setObjectName("gpu-monitor")
        self._poller = _Poller(interval_ms)
        self._poller.moveToThread(self._thread)
        self._thread.started.connect(self._poller.start)
        self._poller.reading.connect(self._publish)  # queued: crosses back to this thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and join the thread (call before the application quits)."""
        if self._thread.isRunning():
            # Run the poller's cleanup on its own thread, then end the thread's event loop.
            QTimer.singleShot(0, self._poller, self._poller.stop)
            self._thread.quit()
            self._thread.wait(5000)

    @Slot(object)
    def _publish(self, state: GpuState) -> None:
        self.last = state
        self.updated.emit(state)
