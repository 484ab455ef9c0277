"""The status-bar readout of GPU memory: subscribes to a :class:`~gui.gpu_monitor.GpuMonitor`."""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QLabel, QWidget

from appliance.gpu import GpuState, format_bytes


class GpuStatusLabel(QLabel):
    """Shows each GPU's memory in use, or why no GPU can be read."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("GPU: reading…", parent)
        self.setObjectName("gpuStatus")

    @Slot(object)
    def show_state(self, state: GpuState) -> None:
        if not state.available:
            self.setText("No NVIDIA GPU: training runs on the CPU")
            self.setToolTip(state.summary())
            return
        parts = []
        tips = []
        for g in state.gpus:
            share = g.memory_used / g.memory_total if g.memory_total else 0.0
            parts.append(
                f"GPU{g.index} {format_bytes(g.memory_used)} / {format_bytes(g.memory_total)}"
            )
            tips.append(
                f"GPU {g.index}: {g.name}, {share:.0%} memory in use, "
                f"utilisation {g.utilization_pct if g.utilization_pct is not None else 'n/a'}%, "
                f"{g.temperature_c if g.temperature_c is not None else 'n/a'} °C"
            )
        self.setText("  |  ".join(parts))
        self.setToolTip("\n".join(tips) + f"\nDriver {state.driver_version}")
