"""NVML readouts: a clean state without a GPU, correct numbers with one."""

from __future__ import annotations

import re
import sys
import types
from typing import Any

import pytest

from appliance import gpu


class _Memory:
    def __init__(self, used: int, total: int) -> None:
        self.used, self.total = used, total


class _Util:
    gpu = 73


def _fake_nvml(*, fail_count: bool = False, util_unsupported: bool = False) -> Any:
    class NVMLError_NotSupported(Exception):
        pass

    class NVMLError_GpuIsLost(Exception):
        pass

    calls: list[str] = []

    def count() -> int:
        if fail_count:
            raise NVMLError_GpuIsLost("GPU is lost")
        return 2

    def utilisation(handle: int) -> _Util:
        if util_unsupported and handle == 1:
            raise NVMLError_NotSupported("Not Supported")
        return _Util()

    return types.SimpleNamespace(
        calls=calls,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"580.65",
        nvmlDeviceGetCount=count,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: f"NVIDIA H200 #{h}",
        nvmlDeviceGetMemoryInfo=lambda h: _Memory((h + 1) * 2**30, 141 * 2**30),
        nvmlDeviceGetUtilizationRates=utilisation,
        nvmlDeviceGetTemperature=lambda h, sensor: 50 + h,
        NVML_TEMPERATURE_GPU=0,
    )


def test_no_driver_is_a_clean_state(monkeypatch: pytest.MonkeyPatch) -> None:
    class NVMLError_LibraryNotFound(Exception):
        pass

    def init() -> None:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=init))
    state = gpu.read_gpus()
    reason = "LibraryNotFound: NVML Shared Library Not Found"
    assert state == gpu.GpuState(gpus=[], driver_version=None, unavailable_reason=reason)
    assert not state.available
    assert state.summary() == f"No NVIDIA GPU found (NVML: {reason})"
    assert state.to_dict() == {"gpus": [], "driver_version": None, "unavailable_reason": reason}


def test_missing_nvml_package_is_the_same_clean_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # "import pynvml" raises ImportError
    state = gpu.read_gpus()
    assert state == gpu.GpuState(
        unavailable_reason="ModuleNotFoundError: import of pynvml halted; None in sys.modules"
    )


def test_a_driver_without_devices_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml()
    fake.nvmlDeviceGetCount = lambda: 0
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    state = gpu.read_gpus()
    assert state == gpu.GpuState(gpus=[], driver_version="580.65", unavailable_reason=None)
    assert not state.available
    assert state.summary() == "No NVIDIA GPU found (NVML: no devices)"


def test_real_nvml_here_gives_a_whole_state() -> None:
    state = gpu.read_gpus()
    if state.unavailable_reason is not None:
        # No driver here (CI machines): the clean state, with NVML's reason as "Kind: text".
        assert state == gpu.GpuState(unavailable_reason=state.unavailable_reason)
        assert re.fullmatch(r"[A-Za-z]\w*(: \S.*)?", state.unavailable_reason)
        assert state.summary() == f"No NVIDIA GPU found (NVML: {state.unavailable_reason})"
        return
    assert state.driver_version
    assert state.available
    for index, reading in enumerate(state.gpus):
        assert reading.index == index
        assert reading.name
        assert reading.memory_total > 0
        assert 0 <= reading.memory_used <= reading.memory_total
        assert reading.utilization_pct is None or 0 <= reading.utilization_pct <= 100
        assert reading.temperature_c is None or 0 < reading.temperature_c < 130


def test_two_gpus_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(util_unsupported=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    state = gpu.read_gpus()
    assert fake.calls == ["init", "shutdown"]
    gib = 2**30
    assert state == gpu.GpuState(
        gpus=[
            gpu.GpuReading(0, "NVIDIA H200 #0", 1 * gib, 141 * gib, 73, 50),
            # Utilisation unsupported on this one: None, the rest still read.
            gpu.GpuReading(1, "NVIDIA H200 #1", 2 * gib, 141 * gib, None, 51),
        ],
        driver_version="580.65",
        unavailable_reason=None,
    )
    assert state.available
    assert state.gpus[0].memory_free == 140 * gib
    assert state.summary() == (
        "GPU0 NVIDIA H200 #0: 1.0 GiB / 141.0 GiB, 73% | GPU1 NVIDIA H200 #1: 2.0 GiB / 141.0 GiB"
    )
    assert state.to_dict()["gpus"][1]["memory_used"] == 2 * 2**30


def test_failure_during_reading_becomes_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(fail_count=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with gpu.NvmlReader() as reader:
        state = reader.read()
    assert state == gpu.GpuState(unavailable_reason="GpuIsLost: GPU is lost")
    assert fake.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536 * 2**20, "1.5 GiB"),
        (2**50, "1024.0 TiB"),
    ],
)
def test_format_bytes(value: int, text: str) -> None:
    assert gpu.format_bytes(value) == text
