"""The pre-flight memory estimate, checked term by term against hand-worked numbers.

The reference is the worked example of docs/engineering-notes.md: Llama-3-8B (L=32, h=4096,
h_kv=1024, f=14336, V=128256), LoRA r=16 on all seven projections, s=2048, b=1, checkpointing
on: W4 3.60 GB, E 2.10 GB (4.20 upcast), LoRA 0.67 GB (41.9 M params), A 0.88 GB, Z 3.15 GB,
D ~0.3 GB, about 10.7 GB allocated with 16-bit embeddings and 12.8 GB with the upcast.
"""

from __future__ import annotations

import pytest

from appliance.errors import TrainingError
from appliance.training.config import TrainConfig
from appliance.training.estimate import (
    CPU_STEP_SLACK,
    CUDA_CONTEXT_BYTES,
    ModelShape,
    estimate_memory,
    lora_parameter_count,
    render_estimate,
    suggest_changes,
)
from appliance.training.settings import apply_overrides, build_config

LLAMA3_8B = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}
LLAMA32_1B = {
    "num_hidden_layers": 16,
    "hidden_size": 2048,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}

# Hand-worked from the shapes (per layer: q, k, v, o, gate, up, down).
L8B_LINEAR_PER_LAYER = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336
L8B_LINEAR = 32 * L8B_LINEAR_PER_LAYER  # 6,979,321,856
L8B_LORA_R16_ALL = (
    32 * 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 3 * (4096 + 14336))
)
L8B_EMBED_AND_NORMS = 2 * 128256 * 4096 + (2 * 32 + 1) * 4096


def facts_example(**extra: str) -> TrainConfig:
    sets = {
        "rank": "16",
        "target_modules": "all-linear",
        "max_seq_length": "2048",
        "micro_batch_size": "1",
        "gradient_checkpointing": "true",
        "dropout": "0",
        "compute_dtype": "bf16",
        # The notes' worked example uses the stock (whole logits) loss.
        "chunked_loss": "false",
        **extra,
    }
    return build_config("balanced", [f"{k}={v}" for k, v in sets.items()])


def test_hand_counts_of_llama3_8b() -> None:
    assert L8B_LINEAR == 6_979_321_856
    assert L8B_LORA_R16_ALL == 41_943_040  # the notes' worked example: 41.9 M
    shape = ModelShape.from_config(LLAMA3_8B)
    assert shape.linear_params == L8B_LINEAR
    assert shape.embedding_params + shape.norm_params == L8B_EMBED_AND_NORMS
    assert lora_parameter_count(shape, 16, "all-linear") == L8B_LORA_R16_ALL
    # q and v only: r x (4096 + 4096) + r x (4096 + 1024) per layer.
    assert lora_parameter_count(shape, 16, ["q_proj", "v_proj"]) == 32 * 16 * (8192 + 5120)


def test_llama3_8b_worked_example_term_by_term() -> None:
    est = estimate_memory(LLAMA3_8B, facts_example(), kbit_upcast=False)
    b, s = 1, 2048
    expected = {
        "weights": round(0.516 * L8B_LINEAR),  # 3.601 GB
        "embeddings": 2 * L8B_EMBED_AND_NORMS,  # 2.102 GB
        "lora": 16 * L8B_LORA_R16_ALL,  # 0.671 GB
        "activations": 2 * 32 * b * s * 4096 + 2 * b * s * (6 * 4096 + 2 * 1024 + 4 * 14336),
        "logits": 3 * b * s * 128256 * 4,  # 3.152 GB
        "dequant": round(2.5 * 4096 * 14336 * 2),  # 0.294 GB
        "context": CUDA_CONTEXT_BYTES,
        # Not in the notes' reference formula: peft casts each wrapped projection's bf16 input
        # to fp32 for the adapter and keeps it for backward, one layer at a time under
        # checkpointing.
        "lora_inputs": 4 * b * s * (5 * 4096 + 4096 + 14336),
    }
    assert {item.key: item.bytes for item in est.items} == expected
    gb = {key: value / 1e9 for key, value in expected.items()}
    assert gb["weights"] == pytest.approx(3.60, abs=0.005)
    assert gb["embeddings"] == pytest.approx(2.10, abs=0.005)
    assert gb["lora"] == pytest.approx(0.67, abs=0.005)
    assert gb["activations"] == pytest.approx(0.88, abs=0.005)
    assert gb["logits"] == pytest.approx(3.15, abs=0.005)
    assert gb["dequant"] == pytest.approx(0.3, abs=0.05)
    facts_terms = est.allocated_bytes - expected["lora_inputs"]
    assert facts_terms / 1e9 == pytest.approx(10.7, abs=0.05)
    assert est.allocated_bytes / 1e9 == pytest.approx(11.02, abs=0.01)
    assert est.total_bytes == est.allocated_bytes + CUDA_CONTEXT_BYTES
    assert est.trainable_params == L8B_LORA_R16_ALL


def test_llama3_8b_with_the_kbit_upcast() -> None:
    est = estimate_memory(LLAMA3_8B, facts_example(), kbit_upcast=True)
    assert est.item("embeddings").bytes == 4 * L8B_EMBED_AND_NORMS  # 4.20 GB
    facts_terms = est.allocated_bytes - est.item("lora_inputs").bytes
    assert facts_terms / 1e9 == pytest.approx(12.8, abs=0.05)


def test_without_checkpointing_every_layer_keeps_its_activations() -> None:
    on = estimate_memory(LLAMA3_8B, facts_example())
    off = estimate_memory(LLAMA3_8B, facts_example(gradient_checkpointing="false"))
    per_layer = 2 * 1 * 2048 * (6 * 4096 + 2 * 1024 + 4 * 14336)
    assert off.item("activations").bytes == 32 * per_layer  # 11.0 GB
    assert off.item("lora_inputs").bytes == 32 * on.item("lora_inputs").bytes
    assert off.total_bytes > on.total_bytes + 10e9


def test_activations_and_logits_scale_with_batch_and_sequence() -> None:
    one = estimate_memory(LLAMA3_8B, facts_example())
    four = estimate_memory(LLAMA3_8B, facts_example(micro_batch_size="4"))
    half = estimate_memory(LLAMA3_8B, facts_example(max_seq_length="1024"))
    for key in ("activations", "logits", "lora_inputs"):
        assert four.item(key).bytes == 4 * one.item(key).bytes
        assert 2 * half.item(key).bytes == one.item(key).bytes
    assert four.item("weights") == one.item("weights")


def test_dropout_adds_a_mask_byte_a_value() -> None:
    no = estimate_memory(LLAMA3_8B, facts_example())
    yes = estimate_memory(LLAMA3_8B, facts_example(dropout="0.1"))
    assert yes.item("lora_inputs").bytes == no.item("lora_inputs").bytes * 5 // 4


def test_lora_method_keeps_16_bit_weights_and_no_dequant_scratch() -> None:
    est = estimate_memory(LLAMA3_8B, facts_example(method="lora"))
    assert est.item("weights").bytes == 2 * L8B_LINEAR
    assert est.item("embeddings").bytes == 2 * L8B_EMBED_AND_NORMS  # no k-bit upcast
    assert "dequant" not in {item.key for item in est.items}


def test_bytes_per_4bit_parameter_follow_the_nf4_layout() -> None:
    from appliance.training import estimate

    # 4 bits + one fp32 absmax per 64 weights = 0.5 + 4/64 bytes.
    assert estimate.NF4_BYTES == 0.5 + 4 / 64
    # + 8-bit absmax per 64 and an fp32 constant per 256 blocks = 0.5 + 1/64 + 4/(64*256).
    assert abs(estimate.NF4_DOUBLE_QUANT_BYTES - (0.5 + 1 / 64 + 4 / 16384)) < 1e-3


def test_cpu_estimate_is_fp32_without_a_cuda_context() -> None:
    est = estimate_memory(LLAMA32_1B, TrainConfig(), device="cpu")
    assert est.dtype == "fp32"
    assert "context" not in {item.key for item in est.items}
    # On the CPU the peak is the process's RSS: its runtime and the step's slack count besides
    # the tensors, and a checkpoint being saved or the model loading where they need more than
    # a step (they never overlap with one).
    process = sum(est.item(k).bytes for k in ("runtime", "slack", "loading", "checkpoint"))
    assert est.total_bytes == est.allocated_bytes + process
    step = sum(i.bytes for i in est.items if i.key in ("activations", "lora_inputs", "logits"))
    step += sum(i.bytes for i in est.items if i.key == "dequant")
    assert est.item("slack").bytes == round(CPU_STEP_SLACK * step)
    assert est.item("checkpoint").bytes == 0  # 24 B a LoRA parameter is less than a step here
    assert est.item("loading").bytes == 0
    # fp32 compute: activations take 4 bytes a value; a 4-byte input needs no LoRA cast copy
    # but dropout (0.05 by default) still keeps one, plus its mask: the fast dropout's 16-bit
    # random lanes on the CPU.
    b, s, h = 4, 1024, 2048
    layer = 6 * h + 2 * 512 + 4 * 8192
    assert est.item("activations").bytes == 4 * 16 * b * s * h + 4 * b * s * layer
    assert est.item("lora_inputs").bytes == 6 * b * s * (5 * h + h + 8192)
    torch_dropout = apply_overrides(TrainConfig(), ["speed.fast_dropout=false"])
    plain = estimate_memory(LLAMA32_1B, torch_dropout, device="cpu")
    assert plain.item("lora_inputs").bytes == 5 * b * s * (5 * h + h + 8192)  # a boolean mask


def test_cpu_checkpoint_and_loading_count_only_beyond_a_step() -> None:
    # A large adapter on short examples: saving its checkpoint needs more than a step holds.
    small_step = facts_example(rank="256", max_seq_length="16", compute_dtype="fp32")
    est = estimate_memory(LLAMA32_1B, small_step, device="cpu")
    keys = ("activations", "lora_inputs", "logits", "dequant", "slack")
    step = sum(i.bytes for i in est.items if i.key in keys)
    assert est.item("slack").bytes == round(CPU_STEP_SLACK * (step - est.item("slack").bytes))
    assert est.item("checkpoint").bytes == 2 * 12 * est.trainable_params - step > 0
    # Loading reads one tensor at a time (the largest: the 4-byte embeddings here) before LoRA
    # exists; the whole file is never resident.
    fp32 = {**LLAMA32_1B, "torch_dtype": "float32", "vocab_size": 1_000_000}
    est = estimate_memory(fp32, small_step, device="cpu")
    step = sum(i.bytes for i in est.items if i.key in keys)
    loading = 4 * 1_000_000 * 2048
    assert est.item("loading").bytes == loading - step - est.item("lora").bytes > 0
    assert estimate_memory(LLAMA32_1B, small_step, device="cpu").item("loading").bytes == 0


def test_tied_embeddings_and_explicit_head_dim() -> None:
    shape = ModelShape.from_config(LLAMA32_1B)
    assert shape.tied_embeddings
    assert shape.embedding_params == 128256 * 2048
    assert shape.linear_shapes()["k_proj"] == (2048, 8 * 64)
    # A head_dim that is not hidden / heads (Qwen3, Gemma) changes q/k/v/o.
    odd = ModelShape.from_config({**LLAMA32_1B, "head_dim": 128})
    assert odd.linear_shapes()["q_proj"] == (2048, 32 * 128)
    assert odd.linear_shapes()["o_proj"] == (32 * 128, 2048)
    # A missing tie flag is read as untied: the larger, safer figure.
    untied = ModelShape.from_config(
        {k: v for k, v in LLAMA32_1B.items() if k != "tie_word_embeddings"}
    )
    assert untied.embedding_params == 2 * 128256 * 2048


def test_text_config_of_a_multimodal_model_is_used() -> None:
    shape = ModelShape.from_config({"model_type": "llava", "text_config": LLAMA32_1B})
    assert shape.layers == 16


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**LLAMA3_8B, "hidden_size": None}, "has no hidden_size"),
        ({**LLAMA3_8B, "num_hidden_layers": "32"}, "num_hidden_layers is '32', not a positive"),
        ({**LLAMA3_8B, "vocab_size": 0}, "vocab_size is 0"),
    ],
)
def test_bad_model_configs_are_named(config: dict[str, object], message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        estimate_memory(config, TrainConfig())


def test_target_modules_that_match_nothing_are_refused() -> None:
    c = build_config("balanced", ["target_modules=c_attn"])
    with pytest.raises(TrainingError, match="match no projection"):
        estimate_memory(LLAMA3_8B, c)


def test_fits_and_suggestions_are_recomputed() -> None:
    big = facts_example(gradient_checkpointing="false", micro_batch_size="4")
    est = estimate_memory(LLAMA3_8B, big)
    free = 40 * 10**9
    assert not est.fits(free)
    assert est.fits(est.total_bytes)
    suggestions = suggest_changes(LLAMA3_8B, big, free)
    assert suggestions
    for suggestion in suggestions:
        assert suggestion.fits
        changed = apply_overrides(big, list(suggestion.assignments))
        assert estimate_memory(LLAMA3_8B, changed).total_bytes == suggestion.total_bytes
        assert suggestion.total_bytes <= free
    texts = [s.assignments[0] for s in suggestions]
    assert "gradient_checkpointing=true" in texts
    # The micro-batch suggestion keeps the effective batch of 4 x 4.
    micro = next(s for s in suggestions if s.assignments[0].startswith("micro_batch_size"))
    changed = apply_overrides(big, list(micro.assignments))
    assert changed.schedule.effective_batch_size == big.schedule.effective_batch_size
    assert suggest_changes(LLAMA3_8B, big, est.total_bytes) == []


def test_a_combination_is_offered_when_no_single_change_fits() -> None:
    big = facts_example(gradient_checkpointing="false", micro_batch_size="8")
    free = 12 * 10**9
    (combined,) = suggest_changes(LLAMA3_8B, big, free)
    assert combined.fits
    assert combined.text.startswith("all of:")
    assert "gradient_checkpointing=true" in combined.assignments
    # Nothing fits when the weights alone are larger than the memory.
    (hopeless,) = suggest_changes(LLAMA3_8B, big, 4 * 10**9)
    assert not hopeless.fits


def test_render_lists_every_term_and_the_verdict() -> None:
    est = estimate_memory(LLAMA3_8B, facts_example())
    lines = render_estimate(est)
    # bf16 compute: the frozen embeddings and LM head stay 16-bit (no k-bit upcast).
    assert lines[0].startswith("Estimated peak GPU memory: 11.52 GB (bf16")
    assert lines[1] == (
        "  sized for the largest micro-batch: 1 x 2048 tokens: max_seq_length "
        "(no token lengths of the data)"
    )
    assert len(lines) == 2 + len(est.items)
    assert any("4-bit linear weights" in line and "3.60 GB" in line for line in lines)
    assert any("logits for the loss" in line and "3.15 GB" in line for line in lines)
    ok = render_estimate(est, free_bytes=80 * 10**9)
    assert ok[-1] == "Free GPU memory: 80.00 GB: it should fit."
    small = 8 * 10**9
    warn = render_estimate(est, small, suggest_changes(LLAMA3_8B, facts_example(), small))
    assert any(
        line.startswith("Warning: free GPU memory is 8.00 GB, 3.52 GB short.") for line in warn
    )
    assert any("Try" in line and "--set" in line for line in warn)
    cpu = render_estimate(estimate_memory(LLAMA32_1B, TrainConfig(), device="cpu"), 10**9)
    assert cpu[0].startswith("Estimated peak RAM memory")


def test_estimate_serialises_for_the_started_event() -> None:
    import json

    est = estimate_memory(LLAMA32_1B, TrainConfig())
    data = json.loads(json.dumps(est.to_dict()))
    assert data["total_bytes"] == est.total_bytes
    assert [i["key"] for i in data["items"]] == [i.key for i in est.items]


def test_the_sequence_length_comes_from_the_data() -> None:
    """Activations are sized for the longest micro-batch the examples can form."""
    lengths = [50, 57, 64, 61, 55]
    config = facts_example(micro_batch_size="4", max_seq_length="1024")
    sized = estimate_memory(LLAMA3_8B, config, lengths=lengths)
    assert sized.tokens == 4 * 64  # the micro-batch holding the 64-token example, padded
    assert sized.sized_from == "4 x 64 tokens: the longest of 5 examples, padded"
    h, L = 4096, 32
    layer = 6 * h + 2 * 1024 + 4 * 14336
    assert sized.item("activations").bytes == 2 * L * 256 * h + 2 * 256 * layer
    assert sized.item("logits").bytes == 3 * 256 * 128256 * 4
    blind = estimate_memory(LLAMA3_8B, config)
    assert blind.tokens == 4 * 1024
    assert blind.item("activations").bytes == 16 * sized.item("activations").bytes

    capped = estimate_memory(LLAMA3_8B, facts_example(max_seq_length="60"), lengths=lengths)
    assert capped.tokens == 60
    assert "capped by max_seq_length 60" in capped.sized_from

    packed = estimate_memory(
        LLAMA3_8B, facts_example(micro_batch_size="2", batching="packed"), lengths=lengths
    )
    assert packed.tokens == 64 + 61  # the two longest, end to end
    assert "packed in one row" in packed.sized_from


def test_chunked_loss_keeps_one_chunk_of_logits() -> None:
    from appliance.training.estimate import CHUNK_ELEMENTS, CHUNKED_LOGIT_BYTES

    long = estimate_memory(LLAMA3_8B, facts_example(chunked_loss="true"))
    rows = CHUNK_ELEMENTS // 128256
    assert long.item("logits").bytes == rows * 128256 * CHUNKED_LOGIT_BYTES  # 0.2 GB
    plain = estimate_memory(LLAMA3_8B, facts_example())
    assert plain.item("logits").bytes > 15 * long.item("logits").bytes
    short = estimate_memory(LLAMA3_8B, facts_example(chunked_loss="true"), lengths=[20])
    assert short.item("logits").bytes == 20 * 128256 * CHUNKED_LOGIT_BYTES


def test_chunked_loss_logits_are_sized_from_the_labelled_positions() -> None:
    from appliance.training.estimate import CHUNKED_LOGIT_BYTES

    # Four examples a micro-batch; the answers (labelled) are a quarter of each conversation.
    config = facts_example(chunked_loss="true", micro_batch_size="4")
    lengths = [60, 64, 58, 50, 61]
    labelled = [15, 16, 14, 12, 40]
    est = estimate_memory(LLAMA3_8B, config, lengths=lengths, labelled=labelled)
    # The four most labelled positions: 40 + 16 + 15 + 14 rows of logits.
    assert est.item("logits").bytes == 85 * 128256 * CHUNKED_LOGIT_BYTES
    assert "at most 85 positions" in est.item("logits").detail
    unknown = estimate_memory(LLAMA3_8B, config, lengths=lengths)
    assert unknown.item("logits").bytes == 130 * 128256 * CHUNKED_LOGIT_BYTES  # a whole chunk
    assert est.total_bytes < unknown.total_bytes
    plain = facts_example(micro_batch_size="4")  # whole logits: every position counts
    whole = estimate_memory(LLAMA3_8B, plain, lengths=lengths, labelled=labelled)
    assert whole.item("logits") == estimate_memory(LLAMA3_8B, plain, lengths=lengths).item("logits")


def test_the_cpu_dequantises_into_one_buffer() -> None:
    cpu = estimate_memory(LLAMA32_1B, TrainConfig(), device="cpu")
    gpu = estimate_memory(LLAMA32_1B, TrainConfig(), device="cuda")
    largest = 2048 * 8192  # the MLP's matrices
    assert cpu.item("dequant").bytes == largest * 4  # one fp32 copy, reused
    assert gpu.item("dequant").bytes == round(2.5 * largest * 2)  # bf16 copies alive at once
    stock = apply_overrides(TrainConfig(), ["speed.own_matmuls=false"])
    assert estimate_memory(LLAMA32_1B, stock, device="cpu").item("dequant").bytes == round(
        2.5 * largest * 4
    )


def test_kept_projection_outputs_are_one_value_per_output_a_token_and_layer() -> None:
    config = facts_example(keep_matmuls="on")
    kept = estimate_memory(LLAMA3_8B, config)
    plain = estimate_memory(LLAMA3_8B, facts_example(keep_matmuls="off"))
    outputs = 4096 + 1024 + 1024 + 4096 + 14336 + 14336 + 4096  # q k v o gate up down
    assert kept.kept_matmuls
    assert not plain.kept_matmuls
    assert kept.item("kept").bytes == 2 * 32 * 2048 * outputs  # bf16, L=32, s=2048
    assert kept.total_bytes - plain.total_bytes == kept.item("kept").bytes
    assert kept.to_dict()["kept_matmuls"] is True
    # Without checkpointing every activation is kept anyway: nothing to add.
    no_ckpt = facts_example(keep_matmuls="on", gradient_checkpointing="false")
    assert not estimate_memory(LLAMA3_8B, no_ckpt).kept_matmuls


def test_auto_keeps_the_projection_outputs_only_where_they_fit() -> None:
    config = facts_example()  # keep_matmuls=auto
    kept_total = estimate_memory(LLAMA3_8B, facts_example(keep_matmuls="on")).total_bytes
    plain_total = estimate_memory(LLAMA3_8B, facts_example(keep_matmuls="off")).total_bytes
    assert estimate_memory(LLAMA3_8B, config, budget=80 * 10**9).kept_matmuls
    # Within the margin: the plain run fits, the kept one would take more than 90% of it.
    tight = int(kept_total / 0.9) - 1
    assert tight > plain_total
    assert not estimate_memory(LLAMA3_8B, config, budget=tight).kept_matmuls
    assert estimate_memory(LLAMA3_8B, config, budget=tight + 2).kept_matmuls
    # Unknown free memory (or several processes): the memory-lean path.
    assert not estimate_memory(LLAMA3_8B, config).kept_matmuls


def test_keeping_the_outputs_is_the_first_thing_to_give_up_when_short() -> None:
    config = facts_example(keep_matmuls="on")
    plain_total = estimate_memory(LLAMA3_8B, facts_example(keep_matmuls="off")).total_bytes
    suggestions = suggest_changes(LLAMA3_8B, config, plain_total + 1)
    assert suggestions[0].assignments == ("keep_matmuls=off",)
    assert suggestions[0].fits
