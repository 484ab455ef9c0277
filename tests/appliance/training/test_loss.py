"""The chunked loss against whole logits, and the normalisation over a whole optimizer step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from appliance.training.batching import IGNORE, BatchPlan, Example, collate, pack
from appliance.training.config import TrainConfig
from appliance.training.dropout import FastDropout, keep_threshold, random_lanes, use_fast_dropout
from appliance.training.loss import (
    causal_lm_loss,
    hidden_state_loss_supported,
    linear_cross_entropy,
)
from appliance.training.model import attach_lora, load_base
from appliance.training.settings import build_config
from appliance.training.steps import accumulate


def _config(*sets: str) -> TrainConfig:
    return build_config("quick-test", ["method=lora", "rank=4", "dropout=0", "seed=3", *sets])


@pytest.fixture(scope="module")
def model(tiny_llama: Path) -> Any:
    torch.set_num_threads(1)
    config = _config()
    peft_model = attach_lora(load_base(tiny_llama, config, cuda=False, dtype=torch.float32), config)
    # Non-zero B matrices, so the adapters change the output and get gradients on both sides.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.train()
    return peft_model


def _examples(vocab: int, count: int = 7, seed: int = 0) -> list[Example]:
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(count):
        n = 5 + (i * 3) % 11
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        cut = n // 2  # a prompt without labels, then the reply
        examples.append(Example(ids, [IGNORE] * cut + ids[cut:]))
    return examples


def _lora_grads(model: Any) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    assert a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_linear_cross_entropy_equals_cross_entropy_of_the_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator)
    target = torch.randint(0, 50, (37,), generator=generator)
    plain = torch.nn.functional.cross_entropy(hidden @ weight.t(), target, reduction="sum")
    (plain_grad,) = torch.autograd.grad(2.5 * plain, hidden)
    for rows in (1, 5, 37, 100):  # chunks smaller than, dividing, equal to, larger than N
        chunked = linear_cross_entropy(hidden, weight, target, rows)
        (grad,) = torch.autograd.grad(2.5 * chunked, hidden)
        assert abs(float(chunked.detach() - plain.detach())) <= 1e-6 * abs(float(plain.detach()))
        assert float((grad - plain_grad).abs().max()) <= 1e-6 * float(plain_grad.abs().max())


def test_chunked_loss_and_lora_gradients_equal_the_whole_logits_path(model: Any) -> None:
    assert hidden_state_loss_supported(model)
    vocab = model.config.vocab_size
    batch = collate(_examples(vocab), pad_id=0)
    plain, plain_count = causal_lm_loss(model, batch, chunked=False)
    (plain / plain_count).backward()
    expected = _lora_grads(model)
    # Tiny chunks: several chunks per batch, so the chunking itself is exercised.
    import appliance.training.loss as loss_module

    for rows in (None, 3):
        original = loss_module.chunk_rows
        if rows is not None:
            loss_module.chunk_rows = lambda vocab, r=rows: r  # type: ignore[misc]
        try:
            chunked, count = causal_lm_loss(model, batch, chunked=True)
        finally:
            loss_module.chunk_rows = original
        assert count == plain_count == batch.trained_tokens
        assert abs(float(chunked.detach() - plain.detach())) <= 1e-6 * abs(float(plain.detach()))
        (chunked / count).backward()
        assert _max_diff(_lora_grads(model), expected) <= 1e-6


def test_packed_batch_loss_is_the_sum_over_examples_one_by_one(model: Any) -> None:
    from appliance.training.batching import packing_honoured

    assert packing_honoured(model.get_base_model(), "cpu", torch.float32)
    examples = _examples(model.config.vocab_size, count=5, seed=1)
    total, count = 0.0, 0
    for example in examples:
        loss, n = causal_lm_loss(model.eval(), collate([example], 0))
        total += float(loss.detach())
        count += n
    packed_loss, packed_count = causal_lm_loss(model, pack(examples))
    model.train()
    assert packed_count == count
    # The mean over label tokens: the packed batch equals the examples taken one by one.
    assert abs(float(packed_loss.detach()) / packed_count - total / count) <= 1e-5 * (total / count)


def test_the_packing_probe_fails_where_examples_see_each_other(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without transformers' detection of restarting positions, the second example attends to
    the first; the probe must say so (and the run falls back to grouping)."""
    import transformers.masking_utils as masking

    from appliance.training.batching import packing_honoured
    from appliance.training.model import resolve_batching

    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    honoured = packing_honoured(model.get_base_model(), "cpu", torch.float32)
    assert not honoured
    assert resolve_batching("packed", "sdpa", honoured) == "grouped"
    assert resolve_batching("packed", "sdpa", True) == "packed"
    assert resolve_batching("auto", "sdpa", None) == "grouped"
    assert resolve_batching("auto", "flash_attention_2", True) == "packed"


def test_splitting_a_step_into_micro_batches_keeps_the_gradients(model: Any) -> None:
    """Normalised by the label tokens of the whole step: 1x8, 2x4, 4x2, 8x1 give one gradient."""
    examples = _examples(model.config.vocab_size, count=8, seed=2)
    results = []
    for size in (8, 4, 2, 1):
        plan = BatchPlan(examples, size, seed=5)  # random order: the same 8 for every size
        batches = [plan.batch(i) for i in range(8 // size)]
        total, denominator = accumulate(model, batches, lambda m, b: causal_lm_loss(m, b), "cpu")
        results.append((float(total) / denominator, _lora_grads(model)))
    loss, grads = results[0]
    for other_loss, other_grads in results[1:]:
        assert abs(other_loss - loss) <= 1e-6 * loss
        assert _max_diff(other_grads, grads) <= 1e-6


def test_fast_dropout_drops_at_the_rate_and_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    dropout = FastDropout(0.1)
    x = torch.ones(400_000, requires_grad=True)
    y = dropout(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.1) < 0.003
    assert abs(float(y.detach().mean()) - 1.0) < 0.01
    y.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, y.detach())  # gradient = mask x scale, the same mask
    assert torch.equal(dropout.eval()(x), x)
    # The global generator decides the mask: the same seed, the same mask (exact resume).
    torch.manual_seed(1)
    first = FastDropout(0.3).train()(torch.ones(1000))
    torch.manual_seed(1)
    assert torch.equal(first, FastDropout(0.3).train()(torch.ones(1000)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_is_the_boolean_masks_product_bit_for_bit(dtype: torch.dtype) -> None:
    # The float mask (with the scale folded in for fp32) gives the numbers of x * keep * scale.
    dropout = FastDropout(0.05).train()
    x = torch.randn(4, 59, 576, dtype=dtype, requires_grad=True)
    grad = torch.randn(4, 59, 576, dtype=dtype)
    torch.manual_seed(3)
    keep = random_lanes(x.shape, x.device) >= keep_threshold(dropout.drop_lanes)
    torch.manual_seed(3)
    y = dropout(x)
    y.backward(grad)
    assert y.dtype == dtype
    assert torch.equal(y, torch.mul(x.detach(), keep).mul_(dropout.scale))
    assert x.grad is not None
    assert torch.equal(x.grad, torch.mul(grad, keep).mul_(dropout.scale))
    assert 0.04 < 1 - float(keep.float().mean()) < 0.06


def test_fast_dropout_replaces_lora_dropout(tiny_llama: Path) -> None:
    config = _config("dropout=0.05")
    peft_model = attach_lora(load_base(tiny_llama, config, cuda=False, dtype=torch.float32), config)
    wrapped = sum(1 for m in peft_model.modules() if hasattr(m, "lora_dropout"))
    assert use_fast_dropout(peft_model) == wrapped > 0
    assert not any(type(m) is torch.nn.Dropout for m in peft_model.modules())
