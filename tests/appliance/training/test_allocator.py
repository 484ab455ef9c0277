"""The CPU trainer's heap trimming before each decoder layer (appliance/training/allocator.py).

Whether trimming lowers the resident peak is measured in docs/benchmarks.md ("CPU memory"); here:
the hook sits on every part of every decoder layer, fires before each part's forward and, under
gradient checkpointing, before its recompute in the backward pass, and leaves training unchanged.
"""

from __future__ import annotations

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


def _lora_grads(
    tiny_llama: Path, trimmed: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, int, int, dict[str, Any]]:
    torch.set_num_threads(1)
    config = tiny_config("gradient_checkpointing=true", "dropout=0")
    model = load_for_training(tiny_llama, config, cuda=False, dtype=torch.float32).model
    calls: list[int] = []

    def counting_trim() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(allocator, "trim", counting_trim)
    hooked = allocator.trim_between_layers(model) if trimmed else 0
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    forward = model(input_ids=ids, labels=ids).loss
    after_forward = len(calls)
    forward.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return hooked, after_forward, len(calls), grads


def test_trims_before_every_layer_part_and_its_recompute(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooked, after_forward, total, grads = _lora_grads(tiny_llama, True, monkeypatch)
    assert hooked == 2 * 4  # the tiny LLaMA's 2 layers: attention, MLP, two norms
    assert after_forward == hooked
    assert total == 2 * hooked  # each layer recomputed once in the backward pass
    _, _, untouched, plain = _lora_grads(tiny_llama, False, monkeypatch)
    assert untouched == 0
    assert sorted(grads) == sorted(plain)
    assert grads
    for name, grad in grads.items():
        assert torch.equal(grad, plain[name]), name
