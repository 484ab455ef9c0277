"""The real model: SmolLM2-135M-Instruct (imported from its GGUF) with a random LoRA adapter,
exported as merged bf16 and as GGUF Q8_0, each reloaded from disk and verified."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from appliance import workspace
from appliance.export import ExportOptions, export_adapter, modelfile
from appliance.export import card as export_card
from appliance.export.merge import load_tokenizer
from appliance.registry import Registry
from appliance.vault import Vault
from tests.helpers import gotemplate
from tests.helpers.adapters import make_adapter, open_store

pytestmark = pytest.mark.slow

Store = tuple[Vault, Registry, str]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Store]:
    torch.set_num_threads(1)
    ws, _ = workspace.init(tmp_path_factory.mktemp("smollm2") / "ws")
    vault, reg = open_store(ws)
    # A small std: a random adapter that moves the logits without wrecking the model.
    ref = make_adapter(
        vault, reg, smollm2_gguf, model_name="smollm2", adapter_name="support", std=0.02
    )
    yield vault, reg, ref
    reg.close()


def test_merged_bf16_reloads_and_verifies(store: Store, tmp_path: Path) -> None:
    from safetensors import safe_open

    vault, reg, ref = store
    out = tmp_path / "merged"
    result = export_adapter(vault, reg, ref, ExportOptions.checked("merged", out))
    figures = result.verification
    print("SmolLM2 merged bf16:", figures)
    assert figures["passed"]
    assert figures["max_abs_diff"] <= figures["tolerance"]
    assert figures["relative_diff"] < 0.06
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert config["tie_word_embeddings"] is True
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert "lm_head.weight" not in handle.keys()  # noqa: SIM118 (tied: re-tied on load)
        q = handle.get_tensor("model.layers.0.self_attn.q_proj.weight")
    base = vault.ws.home / reg.models.get("smollm2")["path"]
    with safe_open(str(base / "model.safetensors"), "pt") as handle:
        assert not torch.equal(q, handle.get_tensor("model.layers.0.self_attn.q_proj.weight"))
    assert export_card.check_manifest(out) == []


def test_gguf_q8_0_reloads_and_verifies(store: Store, tmp_path: Path) -> None:
    vault, reg, ref = store
    out = tmp_path / "gguf"
    result = export_adapter(vault, reg, ref, ExportOptions.checked("gguf", out, gguf_type="q8_0"))
    figures = result.verification
    print("SmolLM2 GGUF Q8_0:", figures)
    assert figures["passed"]
    assert figures["tokenizer_match"]
    # The file computes exactly what its quantised weights compute in memory...
    assert figures["file_check"]["max_abs_diff"] <= figures["file_check"]["tolerance"]
    assert figures["file_check"]["greedy_tokens_matching"] == 24
    # ...and Q8_0 moves the largest of all logits by a few percent of their scale (4.1% measured).
    assert 0 < figures["relative_diff"] < 0.06
    assert result.details["dtype"] == "fp32"
    assert (out / "support-1.Q8_0.gguf").stat().st_size < 200 * 1024**2
    assert result.warnings == []

    text = (out / "Modelfile").read_text()
    assert "FROM ./support-1.Q8_0.gguf" in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    tokenizer = load_tokenizer(vault.ws.home / reg.models.get("smollm2")["path"])
    translation = modelfile.translate(tokenizer)
    assert f'TEMPLATE """{translation.template}"""' in text
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    expected = tokenizer.apply_chat_template(
        conversation, tokenize=False, continue_final_message=True
    )
    messages = [{"Role": m["role"], "Content": m["content"]} for m in conversation]
    assert gotemplate.render(translation.template, {"Messages": messages}) == expected
