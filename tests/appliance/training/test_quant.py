"""QLoRA on CPU and bitsandbytes' repacking trap (docs/engineering-notes.md), on the tiny LLaMA.

The trap: on a CPU with AVX512-BF16, bitsandbytes 0.49/0.50 repacks a 4-bit weight on the first
eval-mode forward without grad; afterwards LoRA gradients are silently None and a merge is
corrupt. ``quant.load_4bit`` guards against it. The first tests prove that with the guard an
evaluation pass changes nothing for training or merging; the last one proves, on this very
machine, that without the guard the trap is real (so the first tests can fail).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402

from appliance.errors import TrainingError  # noqa: E402
from appliance.training import quant  # noqa: E402
from tests.helpers.qlora import merge_dequantized  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _peft(model: Any) -> Any:
    # Gradient checkpointing on, as the worker trains by default; q,v only, where a repacked
    # o_proj cuts every gradient path to the adapters (all-linear would only bend them).
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    return get_peft_model(model, config)


def _batch() -> Any:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, 300, (2, 24), generator=generator)


def _grads(model: Any, ids: Any) -> dict[str, Any]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def _evaluate(model: Any, ids: Any) -> Any:
    """What a preview or an evaluation pass does: eval mode, no grad."""
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        model.generate(input_ids=ids[:1, :5], max_new_tokens=3, do_sample=False)
    return logits


def _lora(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture
def guarded(tiny_llama: Path) -> Any:
    return _peft(quant.load_4bit(tiny_llama, torch.float32))


def test_4bit_loading_gives_guarded_nf4_layers(tiny_llama: Path) -> None:
    model = quant.load_4bit(tiny_llama, torch.float32)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7
    for layer in layers:
        assert getattr(layer, quant.REPACK_SWITCH) is False
        assert layer.weight.quant_state.quant_type == "nf4"
        assert layer.weight.quant_state.nested  # double quantisation
    assert quant.disable_cpu_repack(model) == 14


def test_lora_still_trains_after_an_evaluation_pass(guarded: Any) -> None:
    ids = _batch()
    before = _grads(guarded, ids)
    assert before
    assert all(g is not None for g in before.values())

    _evaluate(guarded, ids)
    assert quant.repacked_modules(guarded) == []
    quant.check_not_repacked(guarded)

    with warnings.catch_warnings():
        # The trap's only symptom is this warning; here it must not appear.
        warnings.filterwarnings("error", message=".*autograd kernel was not registered.*")
        after = _grads(guarded, ids)
    assert set(after) == set(before)
    for name, grad in after.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, before[name], msg=name)

    optimizer = torch.optim.AdamW([p for p in guarded.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    start = _lora(guarded)
    for _ in range(6):
        guarded.train()
        loss = guarded(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        _evaluate(guarded, ids)  # an evaluation between every step
    end = _lora(guarded)
    unchanged = [n for n in start if torch.equal(start[n], end[n])]
    assert unchanged == []
    assert losses[-1] < losses[0] - 0.05


def test_merge_after_evaluation_matches_the_unmerged_model(guarded: Any) -> None:
    ids = _batch()
    optimizer = torch.optim.AdamW([p for p in guarded.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(3):
        guarded.train()
        guarded(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    unmerged = _evaluate(guarded, ids)
    with guarded.disable_adapter(), torch.no_grad():
        base = guarded(input_ids=ids).logits
    effect = (unmerged - base).abs().max().item()
    assert effect > 1e-2  # the adapter matters, so a merge that dropped it would show

    merged = merge_dequantized(guarded)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    merged.eval()
    with torch.no_grad():
        logits = merged(input_ids=ids).logits
    torch.testing.assert_close(logits, unmerged, atol=1e-5, rtol=1e-5)


def test_without_the_guard_this_machine_hits_the_trap(tiny_llama: Path) -> None:
    from bitsandbytes.functional import dequantize_4bit, has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes never repacks 4-bit weights")
    from transformers import AutoModelForCausalLM

    raw = AutoModelForCausalLM.from_pretrained(
        tiny_llama,
        quantization_config=quant.bnb_4bit_config(torch.float32),
        device_map="cpu",
        dtype=torch.float32,
        local_files_only=True,
    )
    model = _peft(raw)  # no disable_cpu_repack
    ids = _batch()
    assert all(g is not None for g in _grads(model, ids).values())
    layer = model.base_model.model.model.layers[0].self_attn.o_proj
    weight_before = dequantize_4bit(layer.weight.data, layer.weight.quant_state).clone()

    _evaluate(model, ids)

    assert len(quant.repacked_modules(model)) == 14
    with pytest.raises(TrainingError, match=r"14 4-bit layers .* were repacked"):
        quant.check_not_repacked(model)
    with pytest.warns(UserWarning, match="autograd kernel was not registered"):
        after = _grads(model, ids)
    assert all(g is None for g in after.values())  # LoRA would silently stop learning
    weight_after = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    # A merge would be corrupt: the "dequantised" weight, of the same shape, is no longer the
    # weight (the merge helper refuses it: check_not_repacked above).
    assert weight_after.shape == weight_before.shape
    assert not torch.allclose(weight_after, weight_before, atol=1e-2)
    with pytest.raises(TrainingError, match="repacked"):
        merge_dequantized(model)


@pytest.mark.parametrize("targets", ["all-linear", "q,v"])
def test_estimate_counts_match_the_loaded_model(tiny_llama: Path, targets: str) -> None:
    import json

    from appliance.training.estimate import ModelShape, estimate_memory
    from appliance.training.settings import build_config

    model_config = json.loads((tiny_llama / "config.json").read_text())
    config = build_config("balanced", [f"target_modules={targets}", "rank=4"])
    model = quant.load_4bit(tiny_llama, torch.float32)
    lora = config.lora
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft accepts floats (training/model.py)
            target_modules=lora.target_modules,
        ),
    )
    trainable, total = peft_model.get_nb_trainable_parameters()
    estimate = estimate_memory(model_config, config, device="cpu")
    assert estimate.trainable_params == trainable
    assert estimate.total_params == total
    shape = ModelShape.from_config(model_config)
    packed = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert shape.linear_params == packed
