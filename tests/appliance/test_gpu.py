"""NVML readouts: a clean state without a GPU, correct numbers with one."""

from __future__ import annotations

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
    assert not state.available
    assert state.unavailable_reason == "LibraryNotFound: NVML Shared Library Not Found"
    assert state.summary() == (
        "No NVIDIA GPU found (NVML: LibraryNotFound: NVML Shared Library Not Found)"
    )


def test_real_nvml_here_reads_without_raising() -> None:
    state = gpu.read_gpus()
    assert state.available or state.unavailable_reason


def test_two_gpus_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(util_unsupported=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    state = gpu.read_gpus()
    assert fake.calls == ["init", "shutdown"]
    assert state.driver_version == "580.65"
    assert [g.name for g in state.gpus] == ["NVIDIA H200 #0", "NVIDIA H200 #1"]
    first, second = state.gpus
    assert (first.memory_used, first.memory_total) == (2**30, 141 * 2**30)
    assert first.memory_free == 140 * 2**30
    assert first.utilization_pct == 73
    assert second.utilization_pct is None
    assert second.temperature_c == 51
    assert state.summary() == (
        "GPU0 NVIDIA H200 #0: 1.0 GiB / 141.0 GiB, 73% | GPU1 NVIDIA H200 #1: 2.0 GiB / 141.0 GiB"
    )
    assert state.to_dict()["gpus"][1]["memory_used"] == 2 * 2**30


def test_failure_during_reading_becomes_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(fail_count=True))
    with gpu.NvmlSession() as session:
        state = session.read()
    assert not state.available
    assert state.unavailable_reason == "GpuIsLost: GPU is lost"


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
