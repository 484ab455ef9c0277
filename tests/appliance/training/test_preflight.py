"""Pre-flight: the estimate against the chosen device, as data and as the lines the CLI prints."""

from __future__ import annotations

import subprocess
import sys

from appliance.gpu import GpuReading, GpuState
from appliance.training.config import TrainConfig
from appliance.training.estimate import estimate_memory, render_estimate, suggest_changes
from appliance.training.memory import available_ram
from appliance.training.preflight import CPU_NOTE, check
from appliance.training.settings import build_config
from tests.appliance.training.test_estimate import LLAMA3_8B

GIB = 2**30
H200_TOTAL = 150_754_820_096  # what NVML reports for an H200 (143,771 MiB)


def _gpus(*free: int, total: int = H200_TOTAL) -> GpuState:
    return GpuState(
        gpus=[
            GpuReading(i, "NVIDIA H200", total - f, total, utilization_pct=0, temperature_c=30)
            for i, f in enumerate(free)
        ]
    )


def _config(*sets: str) -> TrainConfig:
    return build_config("balanced", ["max_seq_length=2048", "micro_batch_size=4", *sets])


def test_a_run_that_fits_on_the_chosen_gpu() -> None:
    config = _config()
    verdict = check(LLAMA3_8B, config, gpus=_gpus(100 * GIB, 120 * GIB), gpu_index=1)
    assert verdict.device == "cuda"
    assert verdict.device_label == "GPU 1: NVIDIA H200"
    assert verdict.free_bytes == 120 * GIB
    assert verdict.free_label == "free GPU memory"
    assert verdict.fits is True
    assert verdict.fix is None
    assert verdict.suggestions == ()
    # The run decides keep_matmuls=auto against the same free memory: on an H200, kept.
    estimate = estimate_memory(LLAMA3_8B, config, device="cuda", budget=120 * GIB)
    assert estimate.kept_matmuls
    assert verdict.estimate == estimate
    assert [item.key for item in verdict.items] == [item.key for item in estimate.items]
    # The lines are exactly the CLI's: the device, then the estimate's own rendering.
    assert verdict.lines == ("GPU 1: NVIDIA H200", *render_estimate(estimate, 120 * GIB))
    assert verdict.lines[-1].endswith("it should fit.")


def test_a_run_that_does_not_fit_offers_a_fix_that_fits() -> None:
    config = _config()
    free = 10 * GIB  # the estimate is 11.6 GiB (chunked loss, 16-bit frozen weights)
    verdict = check(LLAMA3_8B, config, gpus=_gpus(free, total=24 * GIB))
    assert verdict.fits is False
    expected = suggest_changes(LLAMA3_8B, config, free, device="cuda")
    assert list(verdict.suggestions) == expected
    fix = verdict.fix
    assert fix is not None
    assert fix == next(s for s in expected if s.fits)
    assert any(line.startswith("Warning: free GPU memory is") for line in verdict.lines)
    assert any(f"--set {fix.assignments[0]}" in line for line in verdict.lines)
    fixed = verdict.apply_fix(config)
    assert fixed != config
    again = check(LLAMA3_8B, fixed, gpus=_gpus(free, total=24 * GIB))
    assert again.fits is True
    assert again.apply_fix(fixed) == fixed  # nothing left to fix


def test_without_a_gpu_the_cpu_and_its_ram_are_used() -> None:
    config = _config()
    verdict = check(
        LLAMA3_8B, config, gpus=GpuState(unavailable_reason="no driver"), ram_free=8 * GIB
    )
    assert (verdict.device, verdict.free_label) == ("cpu", "available RAM")
    assert verdict.device_label == "CPU (no NVIDIA GPU found)"
    assert verdict.note == CPU_NOTE
    assert verdict.fits is False
    assert verdict.suggestions == ()  # fixes are offered for GPUs, where memory is the limit
    estimate = estimate_memory(LLAMA3_8B, config, device="cpu")
    assert verdict.lines == (CPU_NOTE, *render_estimate(estimate, 8 * GIB))
    unknown = check(LLAMA3_8B, config, gpus=GpuState(), ram_free=None)
    assert unknown.fits is None


def test_a_model_that_cannot_be_estimated_says_why() -> None:
    verdict = check({"model_type": "mamba"}, _config(), gpus=_gpus(100 * GIB))
    assert verdict.estimate is None
    assert verdict.fits is None
    assert verdict.lines == (verdict.note,)
    assert (verdict.note or "").startswith("No memory estimate for this model:")


def test_available_ram_is_plausible() -> None:
    ram = available_ram()
    assert ram is not None
    assert 64 * 2**20 < ram < 64 * 2**40


def test_preflight_loads_no_deep_learning_stack() -> None:
    code = (
        "import sys\n"
        "import appliance.training.preflight\n"
        "print(','.join(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
