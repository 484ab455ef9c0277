"""Write a merged llama-family model as one GGUF file with the ``gguf`` package alone.

What llama.cpp (and Ollama) need (docs/engineering-notes.md, "GGUF files that llama.cpp
loads"): GGUF tensor names from the ``gguf`` name map,
``q_proj``/``k_proj`` permuted from Hugging Face's rotary layout to GGML's interleaved one (llama
architecture only: Qwen2 uses the NeoX layout HF already has), the hyperparameters, and for a
byte-level BPE tokenizer the ``gpt2`` tokenizer model with token types, merges, special tokens
and the chat template. Tensors are written one at a time (header first, then each tensor
quantised and streamed), so memory stays at the merged model plus one tensor.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.errors import ExportError
from appliance.export.options import check_cancel

if TYPE_CHECKING:
    import torch

SUPPORTED = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_TEXT = "Llama, Mistral, Qwen2 and SmolLM (LlamaForCausalLM, MistralForCausalLM, " + (
    "Qwen2ForCausalLM)"
)


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the file: its GGUF name, GGML type and where its data comes from."""

    name: str
    source: str
    qtype: Any
    shape: tuple[int, ...]


def check_supported(config: Mapping[str, Any]) -> str:
    """The GGUF architecture for a base model's ``config.json``.

    Raises:
        ExportError: the architecture, its rope scaling or its tokenizer cannot be written.
    """
    archs = list(config.get("architectures") or [])
    arch = next((a for a in archs if a in SUPPORTED), None)
    if arch is None:
        have = archs[0] if archs else config.get("model_type", "unknown")
        raise ExportError(
            f"GGUF export supports {SUPPORTED_TEXT}; this base model is {have}: export it with "
            "--format merged or --format adapter instead"
        )
    rope = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    if rope_type not in (None, "default"):
        raise ExportError(
            f"GGUF export does not write rope scaling of type {rope_type!r} yet; export with "
            "--format merged or --format adapter instead"
        )
    return SUPPORTED[arch]


def check_tokenizer(folder: Path) -> None:
    """The ``gpt2`` GGUF tokenizer model needs a byte-level BPE ``tokenizer.json``.

    Raises:
        ExportError: another kind of tokenizer (SentencePiece, WordPiece...).
    """
    path = folder / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"GGUF export needs {path} ({exc}); use --format merged") from None
    kind = (data.get("model") or {}).get("type")
    if kind != "BPE" or not _has_byte_level(data.get("pre_tokenizer")):
        raise ExportError(
            f"GGUF export writes byte-level BPE tokenizers only; {path} is {kind} without "
            "byte-level pre-tokenisation: use --format merged or --format adapter"
        )


def _has_byte_level(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel":
            return True
        return any(_has_byte_level(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_byte_level(v) for v in node)
    return False


def _rope_theta(config: Mapping[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation: HF's rotate-half layout to GGML's interleaved pairs."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`permute`."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _file_type(gguf_type: str) -> int:
    from gguf import LlamaFileType

    return {
        "f16": LlamaFileType.MOSTLY_F16,
        "q8_0": LlamaFileType.MOSTLY_Q8_0,
        "q4_0": LlamaFileType.MOSTLY_Q4_0,
    }[gguf_type]


def _choose_type(gguf_name: str, shape: tuple[int, ...], gguf_type: str) -> Any:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(shape) < 2:
        return GGMLQuantizationType.F32  # norms and biases: tiny, and precision matters
    wanted = {
        "f16": GGMLQuantizationType.F16,
        "q8_0": GGMLQuantizationType.Q8_0,
        "q4_0": GGMLQuantizationType.Q4_0,
    }[gguf_type]
    if wanted == GGMLQuantizationType.Q4_0 and gguf_name.startswith(("token_embd.", "output.")):
        # As llama.cpp's quantiser does: the embeddings and the output head drive every token,
        # 4 bits there costs far more quality than it saves.
        wanted = GGMLQuantizationType.Q8_0
    block = GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block:
        return GGMLQuantizationType.F16  # rows not a whole number of blocks
    return wanted


def plan(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any], arch: str
) -> list[GgufTensor]:
    """Map every tensor of the merged state dict to its GGUF name and type (no data touched)."""
    import gguf

    model_arch = gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2
    layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(model_arch, layers)
    tied = bool(config.get("tie_word_embeddings"))
    out: list[GgufTensor] = []
    for key, tensor in state.items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue  # computed by the runtime / shared with token_embd
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(
                f"GGUF export does not know where tensor {key} goes in a {arch} model; "
                "export with --format merged instead"
            )
        out.append(GgufTensor(name, key, None, tuple(tensor.shape)))
    return out


def write_gguf(
    path: Path,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    tokenizer_dir: Path,
    gguf_type: str,
    *,
    model_name: str,
    write_back: bool = False,
    on_bytes: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Write the GGUF file; returns figures (tensor count, max weight quantisation error).

    With ``write_back`` (float32 tensors only), each tensor of ``state`` is overwritten in
    place with the values the file holds (quantised and dequantised), so the model that owns
    ``state`` then computes exactly what a correct reader of the file computes: verification
    compares the two to check the file itself, apart from the quantisation it chose.

    Raises:
        ExportError: unsupported architecture or tokenizer (before anything is written).
    """
    import gguf
    from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize

    arch = check_supported(config)
    check_tokenizer(tokenizer_dir)
    tensors = [
        GgufTensor(t.name, t.source, _choose_type(t.name, t.shape, gguf_type), t.shape)
        for t in plan(state, config, arch)
    ]
    writer = gguf.GGUFWriter(path, arch)
    _add_hyperparameters(writer, config, gguf_type, model_name)
    _add_tokenizer(writer, tokenizer_dir, int(config["vocab_size"]))
    for t in tensors:
        if t.qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _numel(t.shape) * 4)
        elif t.qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float16), _numel(t.shape) * 2)
        else:
            byte_shape = quant_shape_to_byte_shape(t.shape, t.qtype)
            writer.add_tensor_info(
                t.name, byte_shape, np.dtype(np.uint8), _numel(byte_shape), raw_dtype=t.qtype
            )
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    worst = 0.0
    for t, data in zip(tensors, _arrays(tensors, state, config, arch), strict=True):
        check_cancel(cancel)
        if t.qtype == gguf.GGMLQuantizationType.F32:
            packed, stored = data, None
        elif t.qtype == gguf.GGMLQuantizationType.F16:
            packed = data.astype(np.float16)
            stored = packed.astype(np.float32)
        else:
            packed = quantize(data, t.qtype)
            stored = dequantize(packed, t.qtype)
        if stored is not None:
            worst = max(worst, float(np.abs(stored - data).max()))
            if write_back:
                _write_back(state[t.source], stored, t.source, config, arch)
        writer.write_tensor_data(packed)
        if on_bytes is not None:
            on_bytes(int(packed.nbytes))
        del packed, data
    writer.close()
    return {"tensors": len(tensors), "weight_error": worst}


def _write_back(
    target: torch.Tensor, stored: np.ndarray, source: str, config: Mapping[str, Any], arch: str
) -> None:
    import torch

    if arch == "llama" and source.endswith(("q_proj.weight", "k_proj.weight")):
        heads = int(config["num_attention_heads"])
        if source.endswith("k_proj.weight"):
            heads = int(config.get("num_key_value_heads") or heads)
        stored = unpermute(stored, heads)
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(stored)).reshape(target.shape))


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _arrays(
    tensors: list[GgufTensor],
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    arch: str,
) -> Iterator[np.ndarray]:
    """Each tensor as float32 numpy, permuted where llama.cpp expects it, one at a time."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    for t in tensors:
        data = state[t.source].detach().float().numpy()
        if arch == "llama" and t.source.endswith("q_proj.weight"):
            data = permute(data, heads)
        elif arch == "llama" and t.source.endswith("k_proj.weight"):
            data = permute(data, kv_heads)
        yield np.ascontiguousarray(data)


def _add_hyperparameters(
    writer: Any, config: Mapping[str, Any], gguf_type: str, model_name: str
) -> None:
    import gguf

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    writer.add_name(model_name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(_file_type(gguf_type))
    if gguf_type != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def token_list(tokenizer_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF types, as llama.cpp's converter lists them.

    Added tokens are CONTROL when special, USER_DEFINED otherwise; ids the tokenizer does not
    use (the model's embedding matrix is often padded) become ``[PADn]`` placeholders.
    """
    import gguf

    from appliance.export.merge import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    reverse = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _add_tokenizer(writer: Any, tokenizer_dir: Path, vocab_size: int) -> None:
    import gguf

    tokens, types = token_list(tokenizer_dir, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise ExportError(
            f"the tokenizer in {tokenizer_dir} has no BPE merges; GGUF export cannot write it"
        )
    special.add_to_gguf(writer)
