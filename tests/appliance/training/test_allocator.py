"""The CPU trainer's heap trimming between decoder layers (appliance/training/allocator.py).

Whether trimming lowers the resident peak, and what it costs, is measured in docs/benchmarks.md
("CPU memory"); here: the hook sits on every part of every decoder layer, fires before each
part's forward and, under gradient checkpointing, before its recompute in the backward pass,
trims only once the resident size has grown by the threshold, and leaves training unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from appliance.training import allocator  # noqa: E402
from appliance.training.model import load_for_training  # noqa: E402
from tests.helpers.training import tiny_config  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.skipif(allocator._libc() is None, reason="needs glibc"),
]


def _counting_trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def counting_trim() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(allocator, "trim", counting_trim)
    return calls


def _lora_grads(
    tiny_llama: Path, resident: Callable[[], int | None] | None, calls: list[int]
) -> tuple[allocator.GrowthTrimmer | None, int, dict[str, Any]]:
    torch.set_num_threads(1)
    config = tiny_config("gradient_checkpointing=true", "dropout=0")
    model = load_for_training(tiny_llama, config, cuda=False, dtype=torch.float32).model
    trimmer = allocator.trim_between_layers(model, 100, resident) if resident else None
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    forward = model(input_ids=ids, labels=ids).loss
    after_forward = len(calls)
    forward.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return trimmer, after_forward, grads


def test_hook_before_every_layer_part_and_its_recompute(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting_trims(monkeypatch)
    readings = iter(range(0, 10**9, 1000))  # each reading 1,000 bytes above the last: over 100
    trimmer, after_forward, grads = _lora_grads(tiny_llama, lambda: next(readings), calls)
    assert trimmer is not None
    parts = 2 * 4  # the tiny LLaMA's 2 layers: attention, MLP, two norms
    assert after_forward == parts
    assert len(calls) == trimmer.trims == 2 * parts  # each layer recomputed once in backward
    calls.clear()
    _, _, plain = _lora_grads(tiny_llama, None, calls)
    assert calls == []
    assert sorted(grads) == sorted(plain)
    assert grads
    for name, grad in grads.items():
        assert torch.equal(grad, plain[name]), name


def test_trims_only_once_the_resident_size_has_grown(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_trims(monkeypatch)
    # the mark, then per call: the reading, and after a trim the reading that sets the mark
    readings = iter([1000, 1050, 1101, 900, 950, 850, 951, 700, 760])
    trimmer = allocator.GrowthTrimmer(100, lambda: next(readings))
    decisions = [trimmer.maybe_trim() for _ in range(6)]
    # 1050: +50, no; 1101: +101, trim (mark 900); 950: +50, no; 850: lower, mark 850;
    # 951: +101, trim (mark 700); 760: +60, no
    assert decisions == [False, True, False, False, True, False]
    assert trimmer.trims == len(calls) == 2


def test_trims_near_the_top_with_less_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_trims(monkeypatch)
    readings = iter([1000, 1020, 1040, 1010, 1030, 900, 990, 1045, 950, 1041, 1030])
    trimmer = allocator.GrowthTrimmer(100, lambda: next(readings), near_top=30)
    decisions = [trimmer.maybe_trim() for _ in range(7)]
    # top 1000: 1020 no; 1040 is 40 above the top, trim (mark and top 1010); 1030 no; 900
    # lower, mark 900; 990 +90, no; 1045 +145 over the mark, trim (mark 950, top stays 1010);
    # 1041 +91 over the mark but 31 above the top, trim (top 1030)
    assert decisions == [False, True, False, False, False, True, True]
    assert trimmer.trims == len(calls) == 3


def test_trims_every_time_where_the_resident_size_is_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _counting_trims(monkeypatch)
    trimmer = allocator.GrowthTrimmer(10**12, lambda: None)
    assert [trimmer.maybe_trim() for _ in range(3)] == [True, True, True]
    assert len(calls) == 3


def test_reads_this_process_resident_size() -> None:
    read = allocator.resident_reader()
    before = read()
    assert before is not None
    assert before > 10 * 2**20  # an interpreter with torch loaded
    block = b"\x01" * (64 * 2**20)  # written: resident at once
    after = read()
    assert after is not None
    assert after - before > 60 * 2**20
    del block
