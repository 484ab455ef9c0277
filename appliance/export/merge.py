"""Load the base unquantised, apply the adapter, merge it, and save merged or adapter folders.

The base is always loaded from its safetensors folder in the export's dtype on the CPU, never in
4-bit: merging into NF4 weights requantises the sum and loses about the adapter's own effect
(docs/engineering-notes.md, "Merging").

A merged safetensors export never builds the merged model: :func:`merged_state` describes each
adapted weight as row blocks of ``W + scale * B @ A`` computed while the shard is written
(:class:`appliance.export.shards.Blocks`), every other tensor is written from the loaded base as
it is. The model with the adapter applied, which computed the reference logits, is left
unchanged, and the peak stays at one copy of the model plus a block of about 4 MB (writing into
the base's weights in place would instead copy every page of the memory-mapped file it touches).
The in-place :func:`merge` remains for GGUF, which reads the merged weights from memory, and for
adapters the row-block path does not cover.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from appliance.adapters import AdapterWeights, apply_to
from appliance.errors import ExportError
from appliance.export import shards
from appliance.export.options import check_cancel

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

TORCH_DTYPES = ("bf16", "fp16", "fp32")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def torch_dtype(name: str) -> torch.dtype:
    """``bf16``/``fp16``/``fp32`` as a torch dtype."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def read_config(folder: Path) -> dict[str, Any]:
    """The base model's ``config.json`` as a dict."""
    try:
        data: dict[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"cannot read {folder / 'config.json'}: {exc}; run 'appliance verify' on the workspace"
        ) from None
    return data


def stored_dtype(config: dict[str, Any]) -> str:
    """The precision the base's weights are stored in, as ``bf16``/``fp16``/``fp32``."""
    raw = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return {"bfloat16": "bf16", "float16": "fp16"}.get(raw, "fp32")


def refuse_quantized(config: dict[str, Any], folder: Path) -> None:
    """An export merges into full-precision weights only.

    Raises:
        ExportError: the base folder holds quantised weights (bitsandbytes, GPTQ, AWQ...).
    """
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
        raise ExportError(
            f"the base model in {folder} is stored quantised ({method}); merging into quantised "
            "weights loses the adapter's effect, so the appliance does not do it: import the "
            "unquantised base model (safetensors in bf16/fp16/fp32) and train on that"
        )


def load_base(folder: Path, dtype: str) -> PreTrainedModel:
    """The base model, unquantised, in ``dtype``, on the CPU, in eval mode."""
    from transformers import AutoModelForCausalLM

    refuse_quantized(read_config(folder), folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=torch_dtype(dtype),
        local_files_only=True,
        trust_remote_code=False,
        device_map=None,
    )
    return model.eval()


def load_tokenizer(folder: Path) -> Any:
    """The base model's tokenizer (local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def apply_adapter(base: PreTrainedModel, weights: AdapterWeights) -> PeftModel:
    """The base with the adapter applied (unmerged): the reference every export is checked on."""
    model = apply_to(base, weights)
    return model.eval()


def release_large_frees() -> None:
    """Make glibc return large freed blocks to the system at once (no-op elsewhere).

    peft's merge computes a float32 delta per layer (tens of MB each) and frees it. glibc raises
    its mmap threshold to the size of such a freed block, so the next ones come from the heap and
    are kept after being freed: measured on a 0.4B model, the merge then peaked at 3.2 copies of
    the model instead of 1.4. Pinning the threshold (which also stops it moving) keeps every
    block above 1 MiB on its own mapping, unmapped when freed.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(1 << 20))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _plain_lora_layers(model: PeftModel) -> list[Any] | None:
    """The adapter's LoRA layers when all are plain ``nn.Linear`` LoRA (else None)."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Linear as LoraLinear

    adapter = model.active_adapter
    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        if (
            not isinstance(layer, LoraLinear)
            or not isinstance(layer.get_base_layer(), torch.nn.Linear)
            or adapter not in layer.lora_A
            or adapter in layer.lora_variant  # DoRA and other variants merge differently
            or layer.lora_bias.get(adapter, False)
            or layer.fan_in_fan_out
            or layer.merged
        ):
            return None
    return layers


MERGE_BLOCK_ELEMENTS = 1 << 20
"""Weight values merged at once: a 4 MB float32 temporary, small enough to stay in cache."""


def _block_rows(in_features: int) -> int:
    return max(1, MERGE_BLOCK_ELEMENTS // max(1, in_features))


def _merged_rows(layer: Any, adapter: str, name: str) -> Iterator[tuple[int, torch.Tensor]]:
    """``W + scale * B @ A`` of one layer a block of rows at a time: (first row, block).

    The arithmetic of peft's merge (the float32 product added to the weight in float32 and
    rounded once to its dtype; peft rounds the product first), but each temporary is a block of
    about 4 MB rather than a float32 copy of the layer. The sum is one GEMM into a float32 copy
    of the rows (``addmm_``), rounded into a block buffer kept for the whole weight (a fresh one
    per block was page faults every time). Finiteness is checked with the block's sum, which is
    NaN or infinite whenever a value is (and, exceptionally, when finite values overflow it; then
    ``aminmax`` decides): half the time of ``aminmax``, which was a quarter of the merge. The
    block is reused: use it before taking the next.

    Raises:
        ExportError: a merged value is NaN or infinite.
    """
    import torch

    weight = layer.get_base_layer().weight
    a = layer.lora_A[adapter].weight.detach().float()
    b = layer.lora_B[adapter].weight.detach().float() * float(layer.scaling[adapter])
    rows = _block_rows(a.shape[1])
    with torch.no_grad():
        buffer = torch.empty(min(rows, weight.shape[0]), weight.shape[1], dtype=torch.float32)
        rounded = (
            buffer
            if weight.dtype == torch.float32
            else torch.empty_like(buffer, dtype=weight.dtype)
        )
        for start in range(0, weight.shape[0], rows):
            part = weight[start : start + rows]
            merged = buffer[: part.shape[0]].copy_(part).addmm_(b[start : start + rows], a)
            block = rounded[: part.shape[0]]
            if rounded is not buffer:
                block.copy_(merged)
            if block.numel() and not _all_finite(block):
                raise _nan_error(name)
            yield start, block


def _all_finite(block: torch.Tensor) -> bool:
    """Whether every value of ``block`` is finite (its sum first; ``aminmax`` if that is not)."""
    import torch

    if math.isfinite(float(block.sum())):
        return True
    low, high = torch.aminmax(block)  # NaN propagates into both
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _merge_rows(layer: Any, adapter: str, name: str) -> None:
    """``W += scale * B @ A`` in place, a block of rows at a time (:func:`_merged_rows`)."""
    import torch

    weight = layer.get_base_layer().weight
    with torch.no_grad():
        for start, block in _merged_rows(layer, adapter, name):
            weight[start : start + block.shape[0]].copy_(block)
    layer.merged_adapters.append(adapter)


def merge(model: PeftModel) -> PreTrainedModel:
    """Add the adapter into the base weights in place and drop the LoRA layers.

    Plain LoRA on linear layers (what the appliance trains) is merged here a block of rows at a
    time; anything else goes through peft's ``merge_and_unload`` (in place: a safe merge clones
    every weight, which with the base memory-mapped from its file doubles the peak).
    Finiteness is checked afterwards.

    Raises:
        ExportError: the merge produced NaN or infinite weights.
    """
    import torch

    layers = _plain_lora_layers(model)
    if layers is not None:
        names = {id(m): n for n, m in model.named_modules()}
        for layer in layers:
            _merge_rows(layer, model.active_adapter, names[id(layer)])
        merged: PreTrainedModel = model.unload()
        return merged.eval()
    release_large_frees()
    merged = model.merge_and_unload(progressbar=False, safe_merge=False)
    for name, param in merged.named_parameters():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            raise _nan_error(name)
    return merged.eval()


def merged_state(model: PeftModel) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The merged model's state dict, with each adapted weight computed only while it is written.

    Returns the base model (for its config) and the tensors under the names ``merge`` followed
    by ``state_dict()`` would give, in the same order; each adapted weight is a
    :class:`~appliance.export.shards.Blocks` whose blocks hold the same values the in-place
    :func:`merge` writes (the same float32 products added to the same rows, rounded once).
    ``model`` is not modified. Adapters that plain row blocks do not cover (DoRA, biases,
    non-linear layers, a weight shared with another tensor) are merged in place instead.

    The blocks raise :class:`ExportError` when a merged value is NaN or infinite.
    """
    layers = _plain_lora_layers(model)
    base = cast("PreTrainedModel", model.get_base_model())
    state = base.state_dict()
    names = {id(m): n for n, m in base.named_modules()}
    targets = {names[id(layer)]: layer for layer in layers or ()}
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        owner = _target_of(key, targets)
        if owner is None:
            out[key] = tensor
            continue
        rest = key[len(owner) + 1 :]
        if not rest.startswith("base_layer."):
            continue  # lora_A, lora_B: gone once merged
        name = f"{owner}.{rest.removeprefix('base_layer.')}"
        if name == f"{owner}.weight":
            out[name] = _merged_blocks(targets[owner], model.active_adapter, name)
        else:
            out[name] = tensor
    uses = Counter(t.data_ptr() for t in state.values() if t.numel())
    if layers is None or any(
        uses[t.get_base_layer().weight.data_ptr()] > 1 for t in targets.values()
    ):  # a tied weight merged in place changes its twin too: keep that behaviour
        merged = merge(model)
        return merged, merged.state_dict()
    return base, out


def _target_of(key: str, targets: dict[str, Any]) -> str | None:
    """The adapted module's name that ``key`` belongs to, if any."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in targets:
            return prefix
    return None


def _merged_blocks(layer: Any, adapter: str, name: str) -> shards.Blocks:
    """One layer's merged weight, computed a block of rows at a time as it is written."""
    weight = layer.get_base_layer().weight

    def produce() -> Iterator[torch.Tensor]:
        for _, block in _merged_rows(layer, adapter, name):
            yield block

    return shards.Blocks(tuple(weight.shape), weight.dtype, produce)


def _nan_error(name: str) -> ExportError:
    return ExportError(
        f"merging the adapter gave NaN or infinite weights in {name}; the adapter is unusable "
        "with this base, or try --dtype fp32"
    )


def save_merged(
    model: PeftModel,
    tokenizer: Any,
    folder: Path,
    dtype: str,
    max_shard_size: int,
    *,
    on_bytes: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[str]:
    """Write the merged model as a transformers folder: config, generation config, shards,
    tokenizer; the adapted weights are merged a block at a time as they are written
    (:func:`merged_state`).

    Raises:
        ExportError: a merged weight is NaN or infinite (the folder is then incomplete).
    """
    base, state = merged_state(model)
    return save_state(
        base, state, tokenizer, folder, dtype, max_shard_size, on_bytes=on_bytes, cancel=cancel
    )


def save_state(
    model: PreTrainedModel,
    state: dict[str, Any],
    tokenizer: Any,
    folder: Path,
    dtype: str,
    max_shard_size: int,
    *,
    on_bytes: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[str]:
    """Write ``state`` with ``model``'s config and generation config, and the tokenizer."""
    model.config.dtype = torch_dtype(dtype)
    if hasattr(model.config, "quantization_config"):  # a plain model: no quantiser marker
        del model.config.quantization_config
    files = shards.save_sharded(folder, state, max_shard_size, on_bytes=on_bytes, cancel=cancel)
    check_cancel(cancel)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return files


def save_adapter(
    weights: AdapterWeights,
    folder: Path,
    *,
    base_name: str,
    base_sha256: str,
    dtype: str | None,
) -> list[str]:
    """Write a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``).

    ``base_model_name_or_path`` names the workspace's base model; its hash is in the
    safetensors metadata, so the base it must be loaded on can always be identified.
    """
    config = {**weights.config, "base_model_name_or_path": base_name, "inference_mode": True}
    tensors = weights.tensors
    if dtype is not None:
        target = torch_dtype(dtype)
        tensors = {k: v.to(target) for k, v in tensors.items()}
    meta = {"format": "pt", "base_model": base_name, "base_model_sha256": base_sha256}
    shards.write_file(folder / ADAPTER_WEIGHTS, tensors, meta)
    with open(folder / ADAPTER_CONFIG, "x", encoding="utf-8") as handle:
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return [ADAPTER_CONFIG, ADAPTER_WEIGHTS]


def load_saved_adapter(base: PreTrainedModel, folder: Path) -> PeftModel:
    """Load an exported adapter folder onto ``base`` the way a user would, with peft."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, folder, is_trainable=False, local_files_only=True)
    return model.eval()
