"""The model as training uses it: base (4-bit or 16/32-bit), LoRA, and the fastest correct path.

Per device:

* **CUDA**: compute in bf16 where the GPU has it (fp16 on older GPUs), attention through PyTorch's
  SDPA, LoRA weights and AdamW states in fp32 (peft keeps adapters in fp32 on a 16-bit base).
  The frozen embeddings, norms and LM head stay in 16-bit: peft's
  ``prepare_model_for_kbit_training`` upcasts them to fp32, which doubles their memory (2.1 GB
  more for Llama-3-8B) and buys nothing for weights that receive no update; the loss upcasts the
  logits it needs to fp32 itself. Only with fp16 compute, whose narrow range can overflow, are
  they upcast as peft does.
* **CPU**: fp32 throughout (AVX2-only CPUs emulate bf16 at a quarter of the speed:
  docs/engineering-notes.md, "CPUs differ between machines"), SDPA, and LoRA dropout drawn by
  :mod:`appliance.training.dropout`.

Gradient checkpointing is the non-reentrant kind, which needs no gradient on the embeddings'
output, so the backward pass stops at the first layer instead of running into the embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from appliance.training.batching import Layout, Order, packing_honoured
from appliance.training.config import TrainConfig
from appliance.training.recompute import checkpoint_kwargs

log = logging.getLogger("appliance.training")

ATTENTION = "sdpa"
"""Attention implementation asked of transformers on every device."""
VARLEN_ATTENTION = frozenset({"flash_attention_2", "flash_attention_3"})
"""Implementations that run packed rows as variable-length sequences rather than through a
dense block-diagonal mask (so packing costs no extra attention arithmetic)."""


def enable_checkpointing(
    model: Any, on: bool, *, keep_matmuls: bool = False, recorded: bool = False
) -> None:
    """Gradient (activation) checkpointing on the base model, non-reentrant; with
    ``keep_matmuls`` the frozen projections' outputs are kept (:mod:`.recompute`), recorded by
    the projections themselves with ``recorded`` (:mod:`.frozen_matmul`)."""
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
    if on:
        kwargs = checkpoint_kwargs(keep_matmuls, recorded=recorded)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        disable = getattr(model, "activation_checkpointing_disable", None)
        (disable or model.gradient_checkpointing_disable)()


@dataclass
class TrainingModel:
    """The PEFT model and the paths chosen for it."""

    model: Any
    """The PeftModel in train mode."""
    batching: str
    """The batching mode used: ``padded``, ``grouped`` or ``packed`` (see :data:`MODES`)."""
    chunked_loss: bool
    """Whether the loss runs from hidden states in chunks (else from whole logits)."""
    attention: str
    """The attention implementation transformers uses."""
    upcast_frozen: bool
    """Whether frozen 16-bit weights were upcast to fp32 (fp16 compute only)."""
    recompute: str = "full"
    """What the backward pass recomputes: ``full`` (checkpointing), ``selective`` (checkpointing
    that keeps the frozen projections' outputs) or ``none`` (no checkpointing)."""


MODES: dict[str, tuple[Order, Layout]] = {
    "padded": ("random", "padded"),
    "grouped": ("grouped", "padded"),
    "packed": ("random", "packed"),
}
"""Each batching mode as (order of examples, layout of a micro-batch)."""


def resolve_batching(requested: str, attention: str, honoured: bool | None) -> str:
    """The batching mode (a key of :data:`MODES`) for the requested ``speed.batching``.

    ``auto`` packs only where the kernel takes variable lengths natively; on dense-mask
    attention (SDPA, eager) a packed row of ``b`` examples costs ``b`` times the attention
    arithmetic of ``b`` grouped rows, so grouping is the better default there. ``packed``
    falls back to grouping when the probe found packing not honoured.
    """
    if requested in ("padded", "grouped"):
        return requested
    if requested == "packed" or (requested == "auto" and attention in VARLEN_ATTENTION):
        if honoured:
            return "packed"
        if requested == "packed":
            log.warning(
                "this model's attention (%s) does not keep packed examples apart; batching "
                "falls back to grouping by length",
                attention,
            )
    return "grouped"


def load_base(
    model_dir: Path,
    config: TrainConfig,
    *,
    cuda: bool,
    dtype: torch.dtype,
    device_index: int = 0,
    fsdp: bool = False,
) -> Any:
    """The frozen base model on its device, in 4-bit for qlora, with SDPA attention; on the CPU
    its weights are read tensor by tensor (:mod:`appliance.training.weights`).

    ``device_index`` is the GPU of this process (its local rank when several train together);
    with ``fsdp`` the 4-bit weights are stored in the compute dtype, which FSDP needs to shard
    them beside the 16-bit ones.
    """
    device_map: Any = {"": device_index} if cuda else "cpu"
    if config.method == "qlora":
        from appliance.training.quant import load_4bit

        model = load_4bit(
            model_dir,
            dtype,
            device_map=device_map,
            quant_storage=dtype if fsdp else None,
            attn_implementation=ATTENTION,
        )
    else:
        from appliance.training.weights import load_causal_lm

        model = load_causal_lm(
            model_dir,
            by_tensor=not cuda,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=ATTENTION,
        )
    model.requires_grad_(False)
    model.config.use_cache = False
    return model


def upcast_frozen_16bit(model: Any) -> int:
    """Upcast fp16/bf16 parameters that are not quantised to fp32, as peft's k-bit preparation
    does; returns how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)
            cast += 1
    return cast


def attach_lora(model: Any, config: TrainConfig) -> Any:
    """LoRA on the configured modules; the adapter's initial weights depend on the seed only."""
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    torch.manual_seed(config.seed)
    return get_peft_model(
        model,
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft accepts floats
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )


def load_for_training(
    model_dir: Path,
    config: TrainConfig,
    *,
    cuda: bool,
    dtype: torch.dtype,
    batching: str | None = None,
    device_index: int = 0,
    fsdp: bool = False,
    keep_matmuls: bool = False,
) -> TrainingModel:
    """Load the base, choose the batching layout, attach LoRA, pick the loss and dropout paths.

    Args:
        model_dir: a local Hugging Face model folder.
        config: the run's config.
        cuda: train on GPU ``device_index`` (else the CPU).
        dtype: the compute dtype.
        batching: a mode decided earlier (a resumed run keeps its own); None decides it now.
        device_index: this process's GPU (its local rank under torchrun).
        fsdp: the model will be sharded by FSDP: 4-bit weights stored in the compute dtype and
            no fp32 upcast of frozen weights (an FSDP unit holds one dtype).
        keep_matmuls: keep the frozen projections' outputs for the backward pass (with
            checkpointing; not under FSDP, whose checkpointed units were not verified with it).
    """
    from appliance.training.dropout import use_fast_dropout
    from appliance.training.frozen_matmul import use_frozen_matmuls
    from appliance.training.lora_forward import use_fused_forward
    from appliance.training.loss import hidden_state_loss_supported

    base = load_base(
        model_dir, config, cuda=cuda, dtype=dtype, device_index=device_index, fsdp=fsdp
    )
    attention = str(getattr(base.config, "_attn_implementation", None) or "eager")
    requested = config.speed.batching
    if batching is None:
        wants_packing = requested == "packed" or (
            requested == "auto" and attention in VARLEN_ATTENTION
        )
        device = f"cuda:{device_index}" if cuda else "cpu"
        honoured = packing_honoured(base, device, dtype) if wants_packing else None
        batching = resolve_batching(requested, attention, honoured)
    upcast = config.method == "qlora" and dtype == torch.float16 and not fsdp
    if upcast:
        upcast_frozen_16bit(base)
    selective = config.gradient_checkpointing and keep_matmuls and not fsdp
    if keep_matmuls and fsdp:
        log.info("speed.keep_matmuls is not used with FSDP: the backward pass recomputes")
    # On the CPU the frozen projections run through frozen_matmul (a reused buffer for 4-bit
    # weights) and record their own outputs for the recompute; FSDP holds flat parameters.
    own_matmuls = not cuda and not fsdp and config.speed.own_matmuls
    enable_checkpointing(
        base, config.gradient_checkpointing, keep_matmuls=selective, recorded=own_matmuls
    )
    model = attach_lora(base, config)
    if own_matmuls:
        use_frozen_matmuls(model)
    if not cuda and config.speed.fast_dropout:
        use_fast_dropout(model)
    if not cuda and not fsdp and config.speed.fused_lora:  # FSDP holds flat parameters
        use_fused_forward(model)
    chunked = config.speed.chunked_loss and hidden_state_loss_supported(model)
    if config.speed.chunked_loss and not chunked:
        log.info("this model's logits are not a plain LM head: the loss uses whole logits")
    model.train()
    recompute = "selective" if selective else "full" if config.gradient_checkpointing else "none"
    return TrainingModel(model, batching, chunked, attention, upcast, recompute)
