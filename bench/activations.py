"""What autograd keeps for the backward pass, per token and decoder layer, against the estimate.

    .venv/bin/python bench/activations.py                 # SmolLM2-135M and Llama-3.2-1B shapes
    .venv/bin/python bench/activations.py --shape llama-3.2-1b --tokens 512

The pre-flight estimate sizes activations with a per-token, per-layer count of the values each
decoder layer keeps for its backward pass (:mod:`appliance.training.estimate`). This script
measures that count instead of reasoning about it: it builds a random two-layer model of a real
shape, loads it through the training path (:func:`appliance.training.model.load_for_training`:
4-bit base for qlora, LoRA on all seven projections, dropout), runs one training forward pass
without checkpointing under :func:`torch.autograd.graph.saved_tensors_hooks`, and adds up the
storage of every tensor saved while each decoder layer runs (each storage once; the model's own
weights left out). It runs on the CPU in any dtype: with bf16 compute the autograd graph is the
one CUDA builds (16-bit residual stream, fp32 LoRA inputs, torch dropout), except the attention
kernel, whose saved tensors (q, k, v, output, log-sum-exp) are those of flash attention on both.

Prints bytes per token per layer measured and estimated, and their ratio, for the CPU path
(fp32) and the CUDA path (bf16, torch dropout). ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import offline  # noqa: E402

offline.enforce()

SHAPES: dict[str, dict[str, Any]] = {
    # Published config.json values (shapes only; two layers, a small vocabulary: per-layer
    # figures do not depend on either).
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
    },
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
    },
}

PATHS = {
    # name: (compute dtype, LoRA dropout, the appliance's CPU dropout)
    "cpu fp32": ("fp32", 0.05, True),
    "cuda-like bf16": ("bf16", 0.05, False),
    "cuda-like bf16, no dropout": ("bf16", 0.0, False),
}


def build(shape: dict[str, Any], folder: Path) -> None:
    """A random two-layer LLaMA of ``shape`` (fp32 on disk), with a vocabulary of 512."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **shape,
        num_hidden_layers=2,
        vocab_size=512,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)


def saved_per_layer(model: Any, inputs: dict[str, Any]) -> list[int]:
    """Bytes of the storages autograd saves while each decoder layer runs its forward pass."""
    import torch

    base = model.get_base_model()
    layers = list(base.model.layers)
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: set[int] = set()
    per_layer = [0] * len(layers)
    current: list[int | None] = [None]

    def enter(index: int) -> Any:
        def hook(*_: Any) -> None:
            current[0] = index

        return hook

    def leave(*_: Any) -> None:
        current[0] = None

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(enter(index)))
        handles.append(layer.register_forward_hook(leave))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if current[0] is not None and ptr not in owned and ptr not in seen and ptr != 0:
            seen.add(ptr)
            per_layer[current[0]] += storage.nbytes()
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            base.model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return per_layer


def measure(shape_name: str, path: str, tokens: int, method: str) -> dict[str, Any]:
    import torch

    from appliance.training.estimate import estimate_memory
    from appliance.training.model import load_for_training
    from appliance.training.settings import build_config

    dtype_name, dropout, fast = PATHS[path]
    shape = SHAPES[shape_name]
    config = build_config(
        "balanced",
        [
            f"method={method}",
            "target_modules=all-linear",
            f"dropout={dropout}",
            "gradient_checkpointing=false",
            "micro_batch_size=1",
            f"max_seq_length={tokens}",
            f"compute_dtype={dtype_name}",
            f"fast_dropout={'true' if fast else 'false'}",
        ],
    )
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    with tempfile.TemporaryDirectory(prefix="activations-") as tmp:
        folder = Path(tmp)
        build(shape, folder)
        loaded = load_for_training(folder, config, cuda=False, dtype=dtype)
        model = loaded.model
        ids = torch.randint(3, 512, (1, tokens))
        per_layer = saved_per_layer(model, {"input_ids": ids})
        model_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    # The steady state: the second layer (the first one's input is the embeddings' output,
    # which no earlier layer saved).
    measured = per_layer[-1] / tokens
    estimate = estimate_memory(
        model_config, config, device="cpu", lengths=[tokens], bf16_supported=True
    )
    layers = model_config["num_hidden_layers"]
    estimated = (
        estimate.item("activations").bytes
        + (estimate.item("lora_inputs").bytes if dropout or dtype_name != "fp32" else 0)
    ) / (layers * tokens)
    return {
        "shape": shape_name,
        "path": path,
        "method": method,
        "tokens": tokens,
        "measured_per_token_layer": measured,
        "estimated_per_token_layer": estimated,
        "ratio": estimated / measured,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--path", nargs="+", choices=sorted(PATHS), default=list(PATHS))
    parser.add_argument("--method", nargs="+", choices=("qlora", "lora"), default=["qlora"])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    rows = []
    print(f"{'shape':14}{'path':28}{'method':7}{'measured B':>12}{'estimate B':>12}{'est/meas':>9}")
    for shape in args.shape:
        for path in args.path:
            for method in args.method:
                row = measure(shape, path, args.tokens, method)
                rows.append(row)
                print(
                    f"{shape:14}{path:28}{method:7}{row['measured_per_token_layer']:12,.0f}"
                    f"{row['estimated_per_token_layer']:12,.0f}{row['ratio']:9.2f}",
                    flush=True,
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
