"""Load the base unquantised, apply the adapter, merge it, and save merged or adapter folders.

The base is always loaded from its safetensors folder in the export's dtype on the CPU, never in
4-bit: merging into NF4 weights requantises the sum and loses about the adapter's own effect
(docs/engineering-notes.md, "Merging"). ``merge_and_unload`` then adds each LoRA product into its
layer in place, one layer at a time, so the peak stays at one copy of the model plus one layer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _merge_rows(layer: Any, adapter: str) -> bool:
    """``W += scale * B @ A`` a block of rows at a time, in place; False on a non-finite result.

    The same arithmetic as peft's merge (float32 product, added into the weight and rounded
    once), but each temporary is a block of about 4 MB rather than a whole float32 copy of the
    layer, so the merge needs no memory beyond the model itself.
    """
    import torch

    weight = layer.get_base_layer().weight
    a = layer.lora_A[adapter].weight.detach().float()
    b = layer.lora_B[adapter].weight.detach().float() * float(layer.scaling[adapter])
    rows = max(1, (1 << 20) // max(1, a.shape[1]))
    with torch.no_grad():
        for start in range(0, weight.shape[0], rows):
            block = weight[start : start + rows]
            block += b[start : start + rows] @ a
            if not bool(torch.isfinite(block).all()):  # checked while the block is in cache
                return False
    layer.merged_adapters.append(adapter)
    return True


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
            if not _merge_rows(layer, model.active_adapter):
                raise _nan_error(names[id(layer)])
        merged: PreTrainedModel = model.unload()
        return merged.eval()
    release_large_frees()
    merged = model.merge_and_unload(progressbar=False, safe_merge=False)
    for name, param in merged.named_parameters():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            raise _nan_error(name)
    return merged.eval()


def _nan_error(name: str) -> ExportError:
    return ExportError(
        f"merging the adapter gave NaN or infinite weights in {name}; the adapter is unusable "
        "with this base, or try --dtype fp32"
    )


def save_merged(
    model: PreTrainedModel,
    tokenizer: Any,
    folder: Path,
    dtype: str,
    max_shard_size: int,
    *,
    on_bytes: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[str]:
    """Write a transformers model folder: config, generation config, shards, tokenizer."""
    model.config.dtype = torch_dtype(dtype)
    if hasattr(model.config, "quantization_config"):  # a plain model: no quantiser marker
        del model.config.quantization_config
    files = shards.save_sharded(
        folder, model.state_dict(), max_shard_size, on_bytes=on_bytes, cancel=cancel
    )
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
