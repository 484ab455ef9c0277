"""LoRA layers' forward with the adapter's product added inside its last matmul (CPU).

peft's LoRA layer computes ``base(x)``, then ``B(A(dropout(x)))``, scales it by
``alpha / r`` and adds it to the base output; for a 4-bit base it first copies the base output
(a defensive ``clone``). That is three extra passes over each projection's output and three
fresh output-sized buffers (copy, scale, add) in the forward pass, again in the recompute under
gradient checkpointing, and their mirror images in the backward pass: seven projections a layer.
Here the last two steps are one ``addmm``: ``base(x) + scaling * (A(dropout(x)) @ B^T)``, the
product, its scaling and the sum in one pass. The base output is not written to (the sum is a
new tensor), so no copy is needed, and the kept base outputs of selective recompute stay valid.

The result is the same sum up to rounding inside the matmul (tests: 1e-6 against peft's forward).
Anything this does not handle (adapters disabled or merged, several adapters, DoRA and other
variants, LoRA bias, mixed dtypes, autocast, extra arguments) goes to peft's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def fused_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``layer``'s LoRA forward in one ``addmm`` after the base; peft's forward otherwise."""
    adapters = layer.active_adapters
    if args or kwargs or layer.disable_adapters or layer.merged or len(adapters) != 1:
        return type(layer).forward(layer, x, *args, **kwargs)
    name = adapters[0]
    if name not in layer.lora_A or name not in layer.lora_B:
        return type(layer).forward(layer, x, *args, **kwargs)
    lora_a = layer.lora_A[name]
    lora_b = layer.lora_B[name]
    if (
        name in layer.lora_variant
        or lora_b.bias is not None
        or torch.is_autocast_enabled()
        or x.dtype != lora_a.weight.dtype
    ):
        return type(layer).forward(layer, x, *args, **kwargs)
    # The base's output has x's dtype (bitsandbytes casts back to the input's; a 16/32-bit
    # linear layer needs x in its own), which the check above made LoRA's too.
    result = layer.base_layer(x)
    hidden = lora_a(layer.lora_dropout[name](x))
    summed = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        hidden.reshape(-1, hidden.shape[-1]),
        lora_b.weight.t(),
        alpha=layer.scaling[name],
    )
    return summed.view(result.shape)


def use_fused_forward(model: torch.nn.Module) -> int:
    """Give every peft LoRA linear layer of ``model`` :func:`fused_forward`; returns how many."""
    from peft.tuners.lora import LoraLayer

    fused = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(
            getattr(module, "base_layer", None), torch.nn.Linear
        ):
            module.forward = types.MethodType(fused_forward, module)
            fused += 1
    return fused
