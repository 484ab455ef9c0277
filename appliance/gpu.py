"""GPU readouts through NVML only (nvidia-ml-py), with a clean "no GPU" state.

This module never touches CUDA, so the GUI process can poll it once a second without
initialising a CUDA context (GPU memory belongs to the trainer). Torch's own per-process
numbers (allocated, reserved, peak) are read by the training child, not here.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

from appliance.units import format_bytes

__all__ = ["GpuReading", "GpuState", "NvmlReader", "format_bytes", "read_gpus"]


@dataclass(frozen=True)
class GpuReading:
    """One NVIDIA GPU at one moment."""

    index: int
    name: str
    memory_used: int
    """Bytes in use on the device, by every process (NVML's view, CUDA contexts included)."""
    memory_total: int
    """Bytes of memory on the device."""
    utilization_pct: int | None
    """GPU core utilisation over NVML's last sample period, or None where unsupported."""
    temperature_c: int | None
    """Core temperature in degrees Celsius, or None where unsupported."""

    @property
    def memory_free(self) -> int:
        return max(0, self.memory_total - self.memory_used)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuState:
    """All NVIDIA GPUs, or why none can be read."""

    gpus: list[GpuReading] = field(default_factory=list)
    driver_version: str | None = None
    unavailable_reason: str | None = None
    """Set when NVML could not be used (no driver, no library): the normal CPU-only state."""

    @property
    def available(self) -> bool:
        return bool(self.gpus)

    def summary(self) -> str:
        """One short line, for a status bar."""
        if not self.gpus:
            return f"No NVIDIA GPU found (NVML: {self.unavailable_reason or 'no devices'})"
        parts = [
            f"GPU{g.index} {g.name}: {format_bytes(g.memory_used)} / {format_bytes(g.memory_total)}"
            + (f", {g.utilization_pct}%" if g.utilization_pct is not None else "")
            for g in self.gpus
        ]
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpus": [g.to_dict() for g in self.gpus],
            "driver_version": self.driver_version,
            "unavailable_reason": self.unavailable_reason,
        }


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlReader:
    """NVML, initialised once for repeated readings (``with NvmlReader() as nvml: nvml.read()``).

    Opening never raises: when NVML is missing every reading is an unavailable state.
    """

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._nvml: Any = None
        self._reason: str | None = None

    def __enter__(self) -> NvmlReader:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        try:
            import pynvml

            with self._lock:
                pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError, ...
            self._nvml = None
            self._reason = _nvml_reason(exc)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                with self._lock:
                    self._nvml.nvmlShutdown()
            except Exception:  # noqa: S110 - shutting down a library that is going away anyway
                pass
            self._nvml = None

    def read(self) -> GpuState:
        """Read every GPU now; an NVML failure turns into the unavailable state."""
        nvml = self._nvml
        if nvml is None:
            return GpuState(unavailable_reason=self._reason or "not initialised")
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            gpus = [self._read_one(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
        except Exception as exc:
            return GpuState(unavailable_reason=_nvml_reason(exc))
        return GpuState(gpus=gpus, driver_version=driver)

    @staticmethod
    def _read_one(nvml: Any, index: int) -> GpuReading:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            utilization = None
        try:
            temperature: int | None = int(
                nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
            )
        except Exception:
            temperature = None
        return GpuReading(
            index=index,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            memory_used=int(memory.used),
            memory_total=int(memory.total),
            utilization_pct=utilization,
            temperature_c=temperature,
        )


def _nvml_reason(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip()
    if name.startswith("NVMLError_"):
        name = name.removeprefix("NVMLError_")
    return f"{name}: {text}" if text and text != name else name


def read_gpus() -> GpuState:
    """Open NVML, read every GPU, close it. For one-off readings (``appliance gpu``)."""
    with NvmlReader() as nvml:
        return nvml.read()
