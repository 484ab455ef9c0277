"""A reference merge of a LoRA adapter into its 4-bit base, for the tests of the repack trap.

The appliance never merges into a 4-bit base (an export loads the base unquantised from its
safetensors folder: :mod:`appliance.export.merge`); the tests use this merge to prove that after
evaluation passes the trained LoRA weights, applied to the dequantised base, give the logits of
the unmerged model (docs/engineering-notes.md, "The bitsandbytes CPU repack trap").
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from appliance.errors import TrainingError
from appliance.training.quant import check_not_repacked


def merge_dequantized(peft_model: Any, dtype: torch.dtype = torch.float32) -> Any:
    """Merge a LoRA adapter into its 4-bit base the safe way: dequantise the base, then merge.

    The adapter weights are copied out, the LoRA layers removed, every ``Linear4bit`` replaced
    by an ``nn.Linear`` holding its dequantised weight, the adapter put back on the plain layers,
    and ``merge_and_unload`` adds it exactly. ``peft_model`` is consumed: use the returned model.

    Raises:
        TrainingError: a 4-bit weight was repacked, so dequantising it would give garbage.
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    check_not_repacked(peft_model)
    adapter = peft_model.active_adapter
    peft_config = copy.deepcopy(peft_model.peft_config[adapter])
    state = {
        key: value.detach().clone()
        for key, value in get_peft_model_state_dict(peft_model, adapter_name=adapter).items()
    }
    base = peft_model.unload()
    base.dequantize(dtype=dtype)
    base.to(dtype)
    plain = get_peft_model(base, peft_config, adapter_name=adapter)
    result: Any = set_peft_model_state_dict(plain, state, adapter_name=adapter)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise TrainingError(f"the adapter does not fit the dequantised base: {unexpected[0]}")
    return plain.merge_and_unload()
