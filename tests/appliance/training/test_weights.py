"""Reading the weights tensor by tensor on the CPU gives exactly the model the stock loading gives.

:func:`appliance.training.weights.load_causal_lm` builds the model from lazy ``pread`` slices
instead of transformers' memory map of the whole file (docs/benchmarks.md, "CPU memory"). The
model must not change at all: every parameter and buffer, every 4-bit layer's packed bytes and
quantisation state, the LoRA adapter drawn with the seed, the config and the generation config.
The stock side is the same code with the folder's safetensors files not found
(:func:`~appliance.training.weights.checkpoint_files` giving None), which is transformers' own
``from_pretrained(folder)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from appliance.training import quant, weights  # noqa: E402
from appliance.training.model import load_for_training  # noqa: E402
from tests.helpers.models import build_tiny_llama  # noqa: E402
from tests.helpers.training import tiny_config  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _stock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "checkpoint_files", lambda _model_dir: None)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    """The files each tensor-by-tensor load read, as it happens."""
    read: list[list[Path]] = []
    original = weights.lazy_state

    def counting(files: list[Path]) -> Any:
        read.append(files)
        return original(files)

    monkeypatch.setattr(weights, "lazy_state", counting)
    return read


def _quant_state(module: Any) -> dict[str, Any]:
    state = module.weight.quant_state
    out = {
        "absmax": state.absmax,
        "code": state.code,
        "blocksize": state.blocksize,
        "shape": tuple(state.shape),
        "dtype": state.dtype,
        "quant_type": state.quant_type,
        "offset": state.offset,
        "cpu_repack": getattr(module, quant.REPACK_SWITCH, None),
    }
    if state.state2 is not None:
        out |= {"absmax2": state.state2.absmax, "code2": state.state2.code}
    return out


def _assert_same(left: Any, right: Any, where: str) -> None:
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor), where
        assert (left.dtype, left.shape) == (right.dtype, right.shape), where
        # bit for bit: compare the bytes, not the values (NaN and -0.0 included)
        assert torch.equal(
            left.reshape(-1).view(torch.uint8), right.reshape(-1).view(torch.uint8)
        ), where
    else:
        assert left == right, where


def _snapshot(model: Any) -> dict[str, Any]:
    """Everything that makes the model what it is, by name."""
    seen: dict[str, Any] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        seen[name] = (tensor.detach(), tensor.requires_grad, type(tensor).__name__)
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            seen[f"{name}#quant_state"] = _quant_state(module)
    seen["#config"] = model.config.to_dict()
    seen["#generation"] = model.generation_config.to_dict()
    seen["#tied"] = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return seen


def _assert_same_model(new: Any, old: Any) -> None:
    a, b = _snapshot(new), _snapshot(old)
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], tuple):
            _assert_same(a[key][0], b[key][0], key)
            assert a[key][1:] == b[key][1:], key
        elif isinstance(a[key], dict) and "absmax" in a[key]:
            for field in a[key]:
                _assert_same(a[key][field], b[key][field], f"{key}.{field}")
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_training_model_is_the_stock_one_bit_for_bit(
    tiny_llama: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config("dropout=0.1", method=method)
    assert weights.checkpoint_files(tiny_llama) == [tiny_llama / "model.safetensors"]
    read = _count_reads(monkeypatch)
    new = load_for_training(tiny_llama, config, cuda=False, dtype=torch.float32).model
    assert read == [[tiny_llama / "model.safetensors"]]  # the new path was taken
    _stock(monkeypatch)
    old = load_for_training(tiny_llama, config, cuda=False, dtype=torch.float32).model
    four_bit = [m for m in new.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert bool(four_bit) == (method == "qlora")
    assert all(getattr(m, quant.REPACK_SWITCH) is False for m in four_bit)  # the guard holds
    lora = [n for n, p in new.named_parameters() if p.requires_grad]
    assert lora
    assert all("lora_" in n for n in lora)
    _assert_same_model(new, old)


def test_sharded_tied_model_loads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    folder = build_tiny_llama(tmp_path / "tied", tie_word_embeddings=True, seed=3)
    model = AutoModelForCausalLM.from_pretrained(folder)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="40KB")
    (sharded / "generation_config.json").unlink(missing_ok=True)  # the default one, as stock
    files = weights.checkpoint_files(sharded)
    assert files is not None
    assert len(files) > 2
    read = _count_reads(monkeypatch)
    new = quant.load_4bit(sharded, torch.float32)
    assert read == [files]
    _stock(monkeypatch)
    old = quant.load_4bit(sharded, torch.float32)
    assert _snapshot(new)["#tied"]
    _assert_same_model(new, old)


def test_folder_without_safetensors_names_loads_the_stock_way(tmp_path: Path) -> None:
    assert weights.checkpoint_files(tmp_path) is None
