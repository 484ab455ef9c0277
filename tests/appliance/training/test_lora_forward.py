"""LoRA's forward with the adapter's product added inside its matmul (``speed.fused_lora``).

Same loss and LoRA gradients as peft's own forward (within fp32 rounding), on the 4-bit and the
fp32 base, with and without selective recompute; one ``addmm`` per adapted projection and no
copy, scale or add; peft's forward wherever the fused one does not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from appliance.training.batching import IGNORE, Example, collate
from appliance.training.loss import causal_lm_loss
from appliance.training.model import load_for_training
from appliance.training.settings import build_config
from tests.appliance.training.test_recompute import OpCounter

pytest.importorskip("bitsandbytes")


def _load(tiny_llama: Path, method: str, fused: bool, keep: bool = False) -> Any:
    torch.set_num_threads(1)
    config = build_config(
        "quick-test",
        [f"method={method}", "rank=4", "dropout=0.1", "seed=5", "gradient_checkpointing=true",
         "target_modules=all-linear",
         f"fused_lora={'true' if fused else 'false'}"],
    )  # fmt: skip
    model = load_for_training(
        tiny_llama, config, cuda=False, dtype=torch.float32, batching="grouped", keep_matmuls=keep
    ).model
    with torch.no_grad():  # non-zero B, so the adapters change the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def _batch(vocab: int) -> Any:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for n in (9, 14, 6):
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        examples.append(Example(ids, [IGNORE] * (n // 2) + ids[n // 2 :]))
    return collate(examples, pad_id=0)


def _loss_and_grads(model: Any) -> tuple[float, dict[str, torch.Tensor], OpCounter]:
    batch = _batch(model.config.vocab_size)
    torch.manual_seed(11)  # the same dropout masks on both sides
    counter = OpCounter()
    with counter:
        loss, count = causal_lm_loss(model, batch, chunked=True)
    (loss / count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads, counter


@pytest.mark.parametrize(("method", "keep"), [("qlora", False), ("qlora", True), ("lora", True)])
def test_same_loss_and_gradients_as_peft(tiny_llama: Path, method: str, keep: bool) -> None:
    fused_loss, fused_grads, fused_ops = _loss_and_grads(_load(tiny_llama, method, True, keep))
    plain_loss, plain_grads, plain_ops = _loss_and_grads(_load(tiny_llama, method, False, keep))
    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    assert sorted(fused_grads) == sorted(plain_grads)
    assert len(fused_grads) == 2 * 7 * 2  # A and B of seven projections in two layers
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    adapted = 7 * 2
    # the forward pass: one addmm per projection, no defensive copy of the 4-bit base output
    assert fused_ops.counts["aten.addmm.default"] - plain_ops.counts["aten.addmm.default"] == (
        adapted
    )
    copies = plain_ops.counts["aten.clone.default"] - fused_ops.counts["aten.clone.default"]
    assert copies == (adapted if method == "qlora" else 0)
    assert fused_ops.counts["aten.mul.Tensor"] < plain_ops.counts["aten.mul.Tensor"]
    assert fused_ops.counts["aten.add.Tensor"] < plain_ops.counts["aten.add.Tensor"]


def test_peft_forward_where_the_fused_one_does_not_apply(tiny_llama: Path) -> None:
    model = _load(tiny_llama, "qlora", True)
    model.eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 8), generator=torch.Generator())
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():  # peft's forward: the base alone
            base = model(input_ids=ids).logits
        plain = _load(tiny_llama, "qlora", False)
        plain.eval()
        with plain.disable_adapter():
            plain_base = plain(input_ids=ids).logits
        plain_adapted = plain(input_ids=ids).logits
    torch.testing.assert_close(base, plain_base, rtol=0, atol=0)
    torch.testing.assert_close(adapted, plain_adapted, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(adapted, base)
