"""Adapters at rest: stored through the vault, read back exactly, tampering detected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from appliance import adapters, workspace
from appliance.errors import IntegrityError, RegistryError
from appliance.registry import Registry
from appliance.vault import Vault

if TYPE_CHECKING:
    from peft import PeftModel

PASS = "adapter test passphrase"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Vault, Registry]]:
    ws, _ = workspace.init(tmp_path / "ws")
    vault = Vault.create(ws, PASS, "alice", target_s=0)
    reg = Registry.open(ws, audit_key=vault.audit_key)
    yield vault, reg
    reg.close()


def _peft_model(folder: Path) -> PeftModel:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapter change the output
                param.normal_(0, 0.2)
    return model.eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_round_trip_through_the_vault(store: tuple[Vault, Registry], tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    vault, reg = store
    model = _peft_model(tiny_llama)
    weights = adapters.from_peft_model(model)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(weights.tensors) == len(lora) > 0
    assert sum(t.numel() for t in weights.tensors.values()) == sum(p.numel() for p in lora.values())
    assert weights.config["r"] == 4
    assert sorted(weights.config["target_modules"]) == ["q_proj", "v_proj"]

    version = adapters.store(vault, reg, "legal", weights, run_id=None, metrics={"eval_loss": 1.5})
    assert version == 1
    folder = vault.ws.adapters_dir / "legal" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.enc", "meta.json"]
    raw = (folder / "adapter.enc").read_bytes()
    assert b"lora_A" not in raw  # no plaintext tensor names, let alone weights
    assert list(vault.ws.tmp_dir.iterdir()) == []

    record, loaded = adapters.load(vault, reg, "legal")
    assert record["version"] == 1
    assert record["metrics"] == {"eval_loss": 1.5}
    assert loaded.config == weights.config
    assert loaded.tensors.keys() == weights.tensors.keys()
    for key, tensor in weights.tensors.items():
        assert torch.equal(loaded.tensors[key], tensor)

    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True).eval()
    base_logits = _logits(fresh)
    applied = adapters.apply_to(fresh, loaded).eval()
    assert torch.allclose(_logits(applied), _logits(model), atol=1e-6)
    assert not torch.allclose(_logits(applied), base_logits, atol=1e-3)


def test_tampered_adapter_is_refused(store: tuple[Vault, Registry], tiny_llama: Path) -> None:
    vault, reg = store
    weights = adapters.from_peft_model(_peft_model(tiny_llama))
    adapters.store(vault, reg, "legal", weights, run_id=None)
    path = vault.ws.adapters_dir / "legal" / "1" / "adapter.enc"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"adapter legal@1 is damaged or was modified"):
        adapters.load(vault, reg, "legal@1")


def test_failed_registration_leaves_nothing(
    store: tuple[Vault, Registry], tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, reg = store
    weights = adapters.from_peft_model(_peft_model(tiny_llama))

    def refuse(*args: object, **kwargs: object) -> int:
        raise RegistryError("disk full")

    monkeypatch.setattr(reg.adapters, "add_version", refuse)  # after the folder moved in
    with pytest.raises(RegistryError):
        adapters.store(vault, reg, "legal", weights, run_id=None)
    assert list(vault.ws.tmp_dir.iterdir()) == []
    assert not (vault.ws.adapters_dir / "legal").exists()


def test_garbage_is_not_an_adapter() -> None:
    with pytest.raises(IntegrityError, match="not a readable adapter"):
        adapters.unpack(b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "adapter x@1")


def test_packed_bytes_are_stored_after_a_header_check(
    store: tuple[Vault, Registry], tiny_llama: Path
) -> None:
    vault, reg = store
    weights = adapters.from_peft_model(_peft_model(tiny_llama))
    blob = adapters.pack(weights)
    assert adapters.check_packed(blob, "x") == weights.config
    assert adapters.store(vault, reg, "legal", blob, run_id=None) == 1
    _, loaded = adapters.load(vault, reg, "legal@1")
    assert all(torch.equal(loaded.tensors[k], v) for k, v in weights.tensors.items())
    with pytest.raises(IntegrityError, match="adapter legal is not a readable adapter"):
        adapters.store(vault, reg, "legal", b"\x00" * 64, run_id=None)
    assert [a["version"] for a in reg.adapters.versions("legal")] == [1]


def test_settling_a_run_needs_no_torch(tmp_path: Path, tiny_llama: Path) -> None:
    import subprocess
    import sys

    blob_file = tmp_path / "adapter.bin"
    blob_file.write_bytes(adapters.pack(adapters.from_peft_model(_peft_model(tiny_llama))))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from appliance import adapters\n"
        "import appliance.training.runs, appliance.training.progress\n"
        "import appliance.training.preflight\n"
        f"config = adapters.check_packed(Path({str(blob_file)!r}).read_bytes(), 'x')\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "print(config['r'], heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "4 []"
