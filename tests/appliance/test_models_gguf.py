"""The bundled SmolLM2 GGUF, imported through the CLI, answers a chat question correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.demo import DEMO_MODEL_NAME
from appliance.fsutil import sha256_file
from appliance.workspace import Workspace
from tests.helpers.cli import CliRunner


@pytest.mark.slow
def test_smollm2_gguf_import_then_chat(ws: Workspace, cli: CliRunner, smollm2_gguf: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

    torch.set_num_threads(1)
    # --demo imports the bundled file: the same path as the smollm2_gguf fixture.
    result = cli("model", "import", "--demo", "--json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert model["name"] == DEMO_MODEL_NAME
    assert model["format"] == "gguf"
    assert model["source_sha256"] == sha256_file(smollm2_gguf)
    assert model["architecture"] == "LlamaForCausalLM"
    assert model["dtype"] == "bfloat16"
    assert 134_000_000 < model["parameters"] < 135_000_000
    assert model["context_length"] == 8192
    assert model["vocab_size"] == 49152
    assert model["has_chat_template"] is True
    folder = ws.home / model["path"]
    assert sorted(p.suffix for p in folder.glob("*.safetensors")) == [".safetensors"]
    assert not list(folder.glob("*.gguf"))
    assert list(ws.tmp_dir.iterdir()) == []

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    llm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert isinstance(prompt, BatchEncoding)  # return_dict=True
    with torch.no_grad():
        output = llm.generate(**prompt, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
