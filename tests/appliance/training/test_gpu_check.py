"""bench/gpu_check.py keeps working where there is no GPU: its CPU smoke run and its clean exit."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from appliance.training.events import Eval, Finished, Memory, Started, Step, replay

BENCH = Path(__file__).resolve().parents[3] / "bench" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_run_records_replayable_events(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    gpu_check = _load()
    assert gpu_check.main(["--cpu-smoke", "--out", str(tmp_path), "--steps", "2"]) == 0
    events = list(replay(tmp_path / "metrics.jsonl"))
    assert [type(e) for e in events] == [Started, Step, Memory, Step, Memory, Eval, Finished]
    started = events[0]
    assert isinstance(started, Started)
    assert started.estimate is not None
    assert started.trainable_params == started.estimate["trainable_params"]
    assert started.total_params == started.estimate["total_params"]
    memory = events[2]
    assert isinstance(memory, Memory)
    assert memory.rss
    assert started.batching == "grouped"
    assert started.loss_path == "chunked"
    # keep_matmuls=auto with the machine's free RAM as the budget: the tiny run fits, so kept.
    assert started.recompute == "selective"
    assert started.estimate["kept_matmuls"] is True
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = summary["results"][0]
    assert row["setting"] == "b1s512"
    # The side by side ran both loops on the same examples; both trained (finite losses).
    for variant in ("appliance", "bare"):
        assert row[variant]["tokens_per_s"] > 0
        assert 0 < row[variant]["final_loss"] < 20
    assert row["appliance"]["padding_share"] < 0.5
    assert summary["packing_honoured"] == {"sdpa": True, "eager": True}


def test_without_cuda_it_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _load().main([]) == 0
    assert "no CUDA GPU here" in capsys.readouterr().err
