"""4-bit loading for QLoRA, with the guard against bitsandbytes' CPU repacking trap.

The trap (bitsandbytes 0.49 and 0.50 on CPUs with AVX512-BF16; docs/engineering-notes.md, "The
bitsandbytes CPU repack trap"): the first forward of a ``bnb.nn.Linear4bit`` in eval mode on an
input that needs no gradient (an evaluation pass, a ``generate()`` preview) repacks the weight
into a CPU inference layout (``quant_state.packing_format_for_cpu``). From then on the matmul
goes through ``gemv_4bit``, which has no autograd kernel: LoRA gradients behind that layer
silently become None and ``dequantize_4bit`` of the weight returns garbage, so a merge is
corrupt. Each layer decides by its ``support_avx512bf16_for_cpu`` attribute (set in
``Linear4bit.__init__`` from the CPU's features); :func:`disable_cpu_repack` turns it off on
every layer, and must run before any eval forward. :func:`check_not_repacked` proves it held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from appliance.errors import TrainingError

REPACK_SWITCH = "support_avx512bf16_for_cpu"
"""``Linear4bit`` attribute (bitsandbytes 0.49-0.50) that allows the CPU repack."""
REPACKED_FLAG = "packing_format_for_cpu"
"""``QuantState`` attribute set once a weight has been repacked."""

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    """``bf16``/``fp16``/``fp32`` as a torch dtype."""
    return DTYPES[name]


def bnb_4bit_config(
    compute_dtype: torch.dtype,
    *,
    double_quant: bool = True,
    quant_storage: torch.dtype | None = None,
) -> Any:
    """The QLoRA quantisation: NF4 weights, double quantisation, matmuls in ``compute_dtype``.

    ``quant_storage``: the dtype the packed 4-bit values are stored in (uint8 by default). FSDP
    flattens each unit's parameters into one tensor of one dtype, so sharding a 4-bit base needs
    them stored in the compute dtype, like the unit's other weights.
    """
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": quant_storage} if quant_storage is not None else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        **extra,
    )


def _linear4bit_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    import bitsandbytes as bnb

    return [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def disable_cpu_repack(model: torch.nn.Module) -> int:
    """Stop every ``Linear4bit`` of ``model`` from repacking its weight for CPU inference.

    Call it right after loading, before any forward pass. The attribute is harmless on a GPU
    (the repack only happens for CPU inputs) and absent before bitsandbytes 0.49, where setting
    it does nothing.

    Returns:
        The number of 4-bit layers guarded.
    """
    layers = _linear4bit_modules(model)
    for _, module in layers:
        setattr(module, REPACK_SWITCH, False)
    return len(layers)


def repacked_modules(model: torch.nn.Module) -> list[str]:
    """Names of the 4-bit layers whose weight is in the CPU inference layout."""
    return [
        name
        for name, module in _linear4bit_modules(model)
        if getattr(getattr(module.weight, "quant_state", None), REPACKED_FLAG, False)
    ]


def check_not_repacked(model: torch.nn.Module) -> None:
    """Refuse to go on when any 4-bit layer has been repacked (training or merging would be wrong).

    Raises:
        TrainingError: naming the first repacked layer.
    """
    bad = repacked_modules(model)
    if bad:
        raise TrainingError(
            f"{len(bad)} 4-bit layers (first: {bad[0]}) were repacked by bitsandbytes for CPU "
            "inference, which stops LoRA gradients and corrupts a merge; this is a bug in the "
            "appliance: report it with the run's log"
        )


def load_4bit(
    model_dir: Path,
    compute_dtype: torch.dtype,
    *,
    device_map: Any = "cpu",
    quant_storage: torch.dtype | None = None,
    **kwargs: Any,
) -> Any:
    """Load a local Hugging Face model folder in 4-bit NF4, guarded against the CPU repack.

    ``quant_storage`` is the dtype the packed 4-bit weights are stored in (FSDP shards them
    only when it matches the compute dtype); ``kwargs`` go to ``from_pretrained`` (e.g.
    ``attn_implementation``). On the CPU the weights are read tensor by tensor
    (:mod:`appliance.training.weights`).
    """
    from appliance.training.weights import load_causal_lm

    model = load_causal_lm(
        Path(model_dir),
        by_tensor=device_map == "cpu",
        quantization_config=bnb_4bit_config(compute_dtype, quant_storage=quant_storage),
        device_map=device_map,
        dtype=compute_dtype,
        **kwargs,
    )
    disable_cpu_repack(model)
    return model


def load_base(model_dir: Path, dtype: torch.dtype, *, four_bit: bool, cuda: bool) -> Any:
    """The base model as training loads it, every weight frozen: NF4 4-bit (guarded against
    the CPU repack) or plain ``dtype``, on GPU 0 when ``cuda`` else on the CPU.

    Generation and evaluation load the base through here too, so an adapter is scored on the
    same model it was trained on.
    """
    device_map: Any = {"": 0} if cuda else "cpu"
    if four_bit:
        model = load_4bit(model_dir, dtype, device_map=device_map)
    else:
        from appliance.training.weights import load_causal_lm

        model = load_causal_lm(
            Path(model_dir), by_tensor=not cuda, dtype=dtype, device_map=device_map
        )
    for param in model.parameters():
        param.requires_grad = False
    return model
