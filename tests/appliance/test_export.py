"""Export on the tiny model: every format written, reloaded, verified and checked exactly."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from appliance import adapters
from appliance.export import ExportOptions, ExportResult, export_adapter
from appliance.export import card as export_card
from appliance.export.gguf_writer import permute
from appliance.registry import Registry
from appliance.vault import Vault
from tests.helpers.adapters import make_adapter, tiny_adapter_store

Store = tuple[Vault, Registry, str]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Store]:
    """One workspace with the tiny base model and one random LoRA adapter, for the module."""
    torch.set_num_threads(1)
    vault, reg, ref = tiny_adapter_store(tmp_path_factory.mktemp("export"), tiny_llama)
    yield vault, reg, ref
    reg.close()


def _export(store: Store, out: Path, fmt: str, **options: Any) -> ExportResult:
    vault, reg, ref = store
    stages: list[str] = []
    result = export_adapter(
        vault,
        reg,
        ref,
        ExportOptions.checked(fmt, out, **options),
        progress=lambda done, total, stage: stages.append(stage),
    )
    assert stages[0] == "checking"
    assert stages[-1] == "finishing"
    assert "verifying" in stages
    return result


def _hand_merge(base_dir: Path, weights: adapters.AdapterWeights) -> dict[str, torch.Tensor]:
    """W + (alpha / r) B A for every adapted layer, computed without peft."""
    from safetensors.torch import load_file

    base = load_file(str(base_dir / "model.safetensors"))
    scale = weights.config["lora_alpha"] / weights.config["r"]
    merged = dict(base)
    for key, a in weights.tensors.items():
        if ".lora_A." not in key:
            continue
        b = weights.tensors[key.replace(".lora_A.", ".lora_B.")]
        target = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
        merged[target] = base[target] + scale * (b @ a)
    return merged


def test_merged_fp32_equals_a_hand_merge(store: Store, tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    vault, reg, ref = store
    out = tmp_path / "merged"
    result = _export(store, out, "merged", dtype="fp32")

    assert sorted(p.name for p in out.iterdir()) == sorted(result.files)
    assert {"MANIFEST", "README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        result.files
    )
    _, weights = adapters.load(vault, reg, ref)
    expected = _hand_merge(tiny_llama, weights)
    written = load_file(str(out / "model.safetensors"))
    assert written.keys() == expected.keys()
    for key, tensor in expected.items():
        assert written[key].dtype == torch.float32
        torch.testing.assert_close(written[key], tensor, atol=2e-6, rtol=0)
    changed = [k for k in expected if "q_proj" in k]
    base = load_file(str(tiny_llama / "model.safetensors"))
    assert all(not torch.equal(written[k], base[k]) for k in changed)

    figures = result.verification
    assert figures["passed"]
    assert figures["greedy_required"]
    assert figures["greedy_tokens_matching"] == figures["greedy_tokens"] == 24
    assert figures["max_abs_diff"] <= figures["tolerance"] < 1e-4
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert "im_start" in (out / "chat_template.jinja").read_text()
    assert not list(tmp_path.glob(".merged*"))  # no staging folder left behind

    assert export_card.check_manifest(out) == []
    manifest = json.loads((out / "MANIFEST").read_text())
    assert manifest["verification"] == figures
    card = (out / "README.md").read_text()
    assert "tiny" in card
    assert "contracts@" in card
    assert "max |Δlogit|" in card

    rows = [e for e in reg.exports.all(ref) if e["path"] == str(out)]
    assert len(rows) == 1
    assert rows[0]["format"] == "merged"
    assert rows[0]["details"]["verification"]["passed"] is True
    assert rows[0]["sha256"] == result.sha256
    audit = reg.audit_rows(action="export.create")
    details = [
        r["details"] if isinstance(r["details"], dict) else json.loads(r["details"]) for r in audit
    ]
    assert any(d["path"] == str(out) for d in details)


def test_merged_bf16_in_shards_reloads(store: Store, tmp_path: Path) -> None:
    vault, reg, ref = store
    out = tmp_path / "sharded"
    options = dataclasses.replace(ExportOptions.checked("merged", out), max_shard_size=40_000)
    result = export_adapter(vault, reg, ref, options)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2
    assert (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert result.details["dtype"] == "bf16"
    assert result.verification["passed"]
    # bf16: within a few units in the last place at the logits' scale, and not trivially 0.
    assert result.verification["tolerance"] < 0.1 * result.verification["logits_scale"]


def test_adapter_folder_is_peft_and_exact(store: Store, tmp_path: Path) -> None:
    from safetensors import safe_open

    vault, reg, ref = store
    out = tmp_path / "adapter"
    result = _export(store, out, "adapter")
    _, weights = adapters.load(vault, reg, ref)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    assert config["peft_type"] == "LORA"
    assert config["r"] == weights.config["r"]
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as handle:
        meta = handle.metadata()
        assert meta["base_model_sha256"] == reg.models.get("tiny")["sha256"]
        assert set(handle.keys()) == set(weights.tensors)
        for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            assert torch.equal(handle.get_tensor(key), weights.tensors[key])
    assert result.verification["max_abs_diff"] == 0.0


def test_gguf_f16_layout_is_what_llama_cpp_expects(
    store: Store, tiny_llama: Path, tmp_path: Path
) -> None:
    import gguf

    vault, reg, ref = store
    out = tmp_path / "gguf"
    result = _export(store, out, "gguf", gguf_type="f16", dtype="fp32")
    assert result.verification["passed"]
    assert result.verification["tokenizer_match"]
    path = out / "legal-1.F16.gguf"
    reader = gguf.GGUFReader(path)

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2
    assert field("llama.attention.head_count") == 4
    assert field("llama.attention.head_count_kv") == 2
    assert field("llama.rope.freq_base") == pytest.approx(10000.0)
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert field("tokenizer.ggml.model") == "gpt2"
    assert "<|im_start|>" in str(field("tokenizer.chat_template"))
    assert len(field("tokenizer.ggml.merges")) > 0
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    assert tokens[1] == "<|im_start|>"
    assert types[1] == gguf.TokenType.CONTROL
    assert types[100] == gguf.TokenType.NORMAL
    assert field("tokenizer.ggml.eos_token_id") == 2

    _, weights = adapters.load(vault, reg, ref)
    merged = _hand_merge(tiny_llama, weights)
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    q = tensors["blk.1.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.F16
    expected_q = permute(merged["model.layers.1.self_attn.q_proj.weight"].numpy(), 4)
    np.testing.assert_array_equal(np.asarray(q.data), expected_q.astype(np.float16))
    k = np.asarray(tensors["blk.0.attn_k.weight"].data)
    expected_k = permute(merged["model.layers.0.self_attn.k_proj.weight"].numpy(), 2)
    np.testing.assert_array_equal(k, expected_k.astype(np.float16))
    v = np.asarray(tensors["blk.0.attn_v.weight"].data)  # v is not permuted
    v_expected = merged["model.layers.0.self_attn.v_proj.weight"].numpy().astype(np.float16)
    np.testing.assert_array_equal(v, v_expected)
    assert "output.weight" in tensors  # this model does not tie its embeddings

    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./legal-1.F16.gguf" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.parametrize("gguf_type", ["q8_0", "q4_0"])
def test_gguf_quantised_verifies_within_its_error(
    store: Store, tmp_path: Path, gguf_type: str
) -> None:
    import gguf

    out = tmp_path / gguf_type
    result = _export(store, out, "gguf", gguf_type=gguf_type)
    figures = result.verification
    assert figures["passed"]
    assert figures["tokenizer_match"]
    assert figures["weight_error"] > 0
    assert 0 < figures["max_abs_diff"] <= figures["tolerance"]
    reader = gguf.GGUFReader(out / f"legal-1.{gguf_type.upper()}.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    wanted = getattr(gguf.GGMLQuantizationType, gguf_type.upper())
    assert types["blk.0.ffn_down.weight"] == wanted
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_force_replaces_an_earlier_export_and_nothing_else(store: Store, tmp_path: Path) -> None:
    from appliance.errors import DestinationError

    vault, reg, ref = store
    out = tmp_path / "dest"
    first = export_adapter(vault, reg, ref, ExportOptions.checked("adapter", out))
    with pytest.raises(DestinationError, match=r"exists; choose another --out, or pass --force"):
        export_adapter(vault, reg, ref, ExportOptions.checked("adapter", out))
    (tmp_path / "beside.txt").write_text("the user's file next to the export")
    second = export_adapter(vault, reg, ref, ExportOptions.checked("adapter", out, force=True))
    assert second.export_id != first.export_id
    assert second.warnings == []
    assert sorted(p.name for p in out.iterdir()) == sorted([*second.files])
    # The old folder was moved aside and emptied file by file; nothing else is left around.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beside.txt", "dest"]
    assert (tmp_path / "beside.txt").read_text() == "the user's file next to the export"
    (out / "old.txt").write_text("previous notes")
    with pytest.raises(DestinationError, match=r"does not list: old\.txt"):
        export_adapter(vault, reg, ref, ExportOptions.checked("adapter", out, force=True))
    assert (out / "old.txt").read_text() == "previous notes"
    assert (out / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beside.txt", "dest"]


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_row_block_merge_matches_peft(
    tiny_llama: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.export import merge
    from tests.helpers.adapters import random_lora

    weights = random_lora(tiny_llama, seed=3)
    ours = merge.merge(merge.apply_adapter(merge.load_base(tiny_llama, dtype), weights))
    monkeypatch.setattr(merge, "_plain_lora_layers", lambda model: None)  # peft's own merge
    theirs = merge.merge(merge.apply_adapter(merge.load_base(tiny_llama, dtype), weights))
    base = merge.load_base(tiny_llama, dtype).state_dict()
    for (key, a), (_, b) in zip(
        ours.state_dict().items(), theirs.state_dict().items(), strict=True
    ):
        assert a.dtype == merge.torch_dtype(dtype)
        # Same arithmetic; a float32 sum may round differently in the last bit, no more.
        ulp = 2.0**-7 if dtype == "bf16" else 2.0**-23
        assert float((a.float() - b.float()).abs().max()) <= ulp * max(1.0, float(b.abs().max()))
        if "proj" in key:
            assert not torch.equal(a, base[key])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("model*.safetensors*"))}


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_streamed_merge_matches_peft_and_the_in_place_merge_byte_for_byte(
    tiny_llama: Path, dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from appliance.export import merge
    from tests.helpers.adapters import random_lora

    # Blocks of 1,000 values: several blocks per weight on the tiny model, the last one partial.
    monkeypatch.setattr(merge, "MERGE_BLOCK_ELEMENTS", 1000)
    weights = random_lora(tiny_llama, seed=5)
    tokenizer = merge.load_tokenizer(tiny_llama)
    model = merge.apply_adapter(merge.load_base(tiny_llama, dtype), weights)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge.save_merged(model, tokenizer, _mkdir(tmp_path / "streamed"), dtype, 40_000)
    # The model that computed the reference logits is left as it was, adapter applied.
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())

    in_place = merge.merge(merge.apply_adapter(merge.load_base(tiny_llama, dtype), weights))
    merge.save_state(
        in_place, in_place.state_dict(), tokenizer, _mkdir(tmp_path / "in_place"), dtype, 40_000
    )
    streamed = _files(tmp_path / "streamed")
    assert len(streamed) > 3  # sharded: index and several shards
    assert streamed == _files(tmp_path / "in_place")

    peft_merged = (
        merge.apply_adapter(merge.load_base(tiny_llama, dtype), weights)
        .merge_and_unload(safe_merge=True)
        .state_dict()
    )
    written: dict[str, torch.Tensor] = {}
    for name in streamed:
        if name.endswith(".safetensors"):
            written.update(load_file(str(tmp_path / "streamed" / name)))
    # The tied-free state dict of the merged model, every tensor written once.
    assert written.keys() == peft_merged.keys()
    base = merge.load_base(tiny_llama, dtype).state_dict()
    ulp = 2.0**-7 if dtype == "bf16" else 2.0**-23
    for key, theirs in peft_merged.items():
        ours = written[key]
        assert ours.dtype == theirs.dtype == merge.torch_dtype(dtype)
        # peft rounds B A to the dtype before adding it: one rounding more, no more apart.
        bound = 2 * ulp * max(1.0, float(theirs.abs().max()))
        assert float((ours.float() - theirs.float()).abs().max()) <= bound, key
        if "proj" in key:
            assert not torch.equal(ours, base[key])
        else:
            assert torch.equal(ours, base[key])


def test_streamed_merge_refuses_nan_naming_the_layer(tiny_llama: Path, tmp_path: Path) -> None:
    from appliance.errors import ExportError
    from appliance.export import merge
    from tests.helpers.adapters import random_lora

    weights = random_lora(tiny_llama, targets=("v_proj",))
    key = next(k for k in weights.tensors if "layers.1." in k and "lora_B" in k)
    weights.tensors[key][3, 0] = float("inf")
    model = merge.apply_adapter(merge.load_base(tiny_llama, "fp32"), weights)
    tokenizer = merge.load_tokenizer(tiny_llama)
    with pytest.raises(ExportError, match=r"NaN or infinite weights in model\.layers\.1\..*v_proj"):
        merge.save_merged(model, tokenizer, _mkdir(tmp_path / "out"), "fp32", 1 << 30)


def test_blocks_that_do_not_fill_their_shape_are_refused(tmp_path: Path) -> None:
    from appliance.export import shards

    def two_rows() -> Iterator[torch.Tensor]:
        yield torch.ones(2, 4)

    short = shards.Blocks((3, 4), torch.float32, two_rows)
    with pytest.raises(ValueError, match="32 bytes produced for 48 declared"):
        shards.write_file(tmp_path / "x.safetensors", {"w": short})


def test_the_file_is_handed_to_the_disk_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from appliance.export import shards

    requests: list[tuple[int, int, int]] = []
    real = shards._sync_file_range()
    assert real is not None  # Linux: the real call must take these arguments

    def recording(fd: int, start: int, length: int, flags: int) -> int:
        requests.append((start, length, flags))
        return real(fd, start, length, flags)

    monkeypatch.setattr(shards, "WRITEBACK_CHUNK", 1 << 20)
    monkeypatch.setattr(shards, "_sync_file_range", lambda: recording)
    big = torch.arange(700_000, dtype=torch.float32)  # 2.8 MB
    blocks = shards.Blocks((4, 300_000), torch.float32, lambda: iter(torch.ones(4, 1, 300_000)))
    size = shards.write_file(tmp_path / "w.safetensors", {"big": big, "blocks": blocks})
    # Consecutive ranges from the file's start, each of at least a chunk, none past its end.
    assert len(requests) >= 3
    assert requests[0][0] == 0
    for _, length, flags in requests:
        assert flags == shards.SYNC_FILE_RANGE_WRITE
        assert length >= 1 << 20
    for (start, length, _), (following, _, _) in itertools.pairwise(requests):
        assert following == start + length
    assert requests[-1][0] + requests[-1][1] <= size
    loaded = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(loaded["big"], big)
    assert torch.equal(loaded["blocks"], torch.ones(4, 300_000))


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_qwen2_gguf_keeps_biases_and_needs_no_permutation(
    store: Store, tiny_llama: Path, tmp_path: Path
) -> None:
    import gguf

    from tests.helpers.adapters import build_tiny_qwen2

    vault, reg, _ = store
    source = build_tiny_qwen2(tmp_path / "qwen2-src", tiny_llama)
    ref = make_adapter(vault, reg, source, model_name="qwen2", adapter_name="qwen-legal")
    out = tmp_path / "qwen2"
    result = export_adapter(vault, reg, ref, ExportOptions.checked("gguf", out, gguf_type="f16"))
    assert result.verification["passed"]
    assert result.verification["file_check"]["max_abs_diff"] == 0.0
    assert result.verification["file_check"]["greedy_tokens_matching"] == 24
    reader = gguf.GGUFReader(out / "qwen-legal-1.F16.gguf")
    assert reader.fields["general.architecture"].contents() == "qwen2"
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias"} <= names


def test_gguf_from_a_bf16_merge_is_checked_against_the_reference_only(
    store: Store, tmp_path: Path
) -> None:
    out = tmp_path / "bf16-q8"
    result = _export(store, out, "gguf", gguf_type="q8_0", dtype="bf16")
    # 16-bit weights cannot hold the file's values, so there is no file_check, only the bound.
    assert "file_check" not in result.verification
    assert result.verification["passed"]
    assert result.details["dtype"] == "bf16"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finiteness_check_of_a_merged_block(dtype: torch.dtype) -> None:
    from appliance.export.merge import _all_finite

    big = torch.finfo(dtype).max / 2
    assert _all_finite(torch.tensor([[0.5, -2.0], [1e-3, 7.0]], dtype=dtype))
    # finite values whose sum overflows: the sum alone would call them infinite
    assert _all_finite(torch.tensor([[big, big], [big, big]], dtype=dtype))
    for bad in (math.nan, math.inf, -math.inf):
        assert not _all_finite(torch.tensor([[0.5, bad], [1.0, 2.0]], dtype=dtype))
    # NaN hidden by an overflowing sum still counts
    assert not _all_finite(torch.tensor([[big, big], [big, math.nan]], dtype=dtype))
