"""Selective recompute (``speed.keep_matmuls``): same loss and gradients, fewer matmuls."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from appliance.training.batching import IGNORE, Example, collate
from appliance.training.frozen_matmul import frozen_forward
from appliance.training.loss import causal_lm_loss
from appliance.training.model import load_for_training
from appliance.training.settings import build_config

pytest.importorskip("bitsandbytes")


class OpCounter(TorchDispatchMode):
    """Counts the operators run while active; matmuls by a weight that needs no gradient apart."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func)
        if name == "aten.mm.default" and not args[1].requires_grad:
            name = "frozen mm"
        self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _train_step(
    tiny_llama: Path, method: str, keep: bool, policy: bool = False
) -> tuple[Any, dict[str, Any], Any]:
    """Loss, LoRA gradients and the operators the backward pass ran, for one micro-batch.

    ``policy``: ``speed.own_matmuls=false``, the stock frozen layers and selective
    checkpointing's per-operator policy (the path on CUDA) instead of the CPU's own frozen
    matmuls that record their outputs."""
    torch.set_num_threads(1)
    config = build_config(
        "quick-test",
        [f"method={method}", "rank=4", "dropout=0.1", "seed=5", "gradient_checkpointing=true",
         f"own_matmuls={'false' if policy else 'true'}"],
    )  # fmt: skip
    loaded = load_for_training(
        tiny_llama, config, cuda=False, dtype=torch.float32, batching="grouped", keep_matmuls=keep
    )
    model = loaded.model
    assert loaded.recompute == ("selective" if keep else "full")
    own = [m for m in model.modules() if getattr(m.forward, "__func__", None) is frozen_forward]
    assert len(own) == (0 if policy else 7 * 2)  # the tiny LLaMA's two layers' projections
    with torch.no_grad():  # non-zero B, so every LoRA matrix gets a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    examples = []
    for n in (9, 14, 6):
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        examples.append(Example(ids, [IGNORE] * (n // 2) + ids[n // 2 :]))
    batch = collate(examples, pad_id=0)
    torch.manual_seed(11)  # the same dropout masks on both sides
    loss, count = causal_lm_loss(model, batch, chunked=True)
    counter = OpCounter()
    with counter:
        (loss / count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach() / count, grads, counter.counts


@pytest.mark.parametrize("policy", [False, True], ids=["recorded", "policy"])
@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_keeping_the_base_matmuls_gives_the_same_loss_and_gradients(
    tiny_llama: Path, method: str, policy: bool
) -> None:
    full_loss, full_grads, full_ops = _train_step(tiny_llama, method, keep=False)
    kept_loss, kept_grads, kept_ops = _train_step(tiny_llama, method, keep=True, policy=policy)

    assert abs(float(full_loss - kept_loss)) <= 1e-6
    assert full_grads.keys() == kept_grads.keys()
    assert any("lora_A" in n for n in full_grads)
    assert any("lora_B" in n for n in full_grads)
    for name, grad in full_grads.items():
        assert float((grad - kept_grads[name]).abs().max()) <= 1e-6, name

    # What the backward pass no longer does: the frozen projections' forward, a second time.
    layers = 2  # the tiny LLaMA's decoder layers
    projections = 7 * layers
    # On the CPU's own path a projection's forward and its input gradient are each a matmul by
    # the frozen (dequantised) weight: recompute (one each, but the layer's last: the recompute
    # stops after the last tensor it must rebuild) and input gradient, against the latter alone.
    assert full_ops["frozen mm"] >= 2 * projections - layers
    assert full_ops["bitsandbytes.gemm_4bit.default"] == 0
    if policy and method == "qlora":
        # bitsandbytes' layer: its forward is one operator (dequantise + matmul), its input
        # gradient a dequantisation and a plain matmul.
        assert kept_ops["bitsandbytes.gemm_4bit.default"] == 0
        assert kept_ops["bitsandbytes.dequantize_4bit.default"] == projections
    assert kept_ops["frozen mm"] == projections


def test_without_checkpointing_there_is_nothing_to_keep(tiny_llama: Path) -> None:
    config = build_config("quick-test", ["method=lora", "rank=4", "gradient_checkpointing=false"])
    loaded = load_for_training(
        tiny_llama, config, cuda=False, dtype=torch.float32, batching="grouped", keep_matmuls=True
    )
    assert loaded.recompute == "none"
