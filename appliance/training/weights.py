"""Loading a model on the CPU with its weights read tensor by tensor, never the whole file mapped.

transformers memory-maps each safetensors file and keeps the mapping until every weight has been
converted (bf16 to fp32, then NF4 for the 4-bit layers). Every page it has read stays resident
in the process until then, so on the CPU the load peaked at the final model plus the whole file:
for SmolLM2-135M QLoRA 857 MiB against 606 MiB once loaded (docs/benchmarks.md, "CPU memory").
Read with ``pread(2)`` instead (safetensors' ``pread`` backend, which transformers itself uses on
Windows), each tensor's bytes live in a buffer of their own that is freed once the tensor has
been converted; the file's pages stay in the kernel's page cache, outside the process.

The model is built by transformers' own loading, from a state dict of lazy slices instead of
the folder, so the conversion, quantisation and weight tying are exactly the stock ones; what the
folder would have given besides the weights (the config, the generation config, the model's
name) is read from it the same way. On a GPU the stock loading stays: the weights go to the
device as they are read, and the host's memory is not what limits a run there.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

INDEX_FILE = "model.safetensors.index.json"
"""transformers' shard index of a sharded safetensors checkpoint."""
SINGLE_FILE = "model.safetensors"
"""transformers' name for an unsharded safetensors checkpoint."""


def checkpoint_files(model_dir: Path) -> list[Path] | None:
    """The safetensors files transformers would load from ``model_dir`` (the index's shards,
    else ``model.safetensors``), or None when it would load something else."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    single = model_dir / SINGLE_FILE
    return [single] if single.is_file() else None


@contextlib.contextmanager
def lazy_state(files: list[Path]) -> Iterator[dict[str, Any]]:
    """Every tensor of ``files`` as a lazy slice read with ``pread`` when it is taken."""
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        state: dict[str, Any] = {}
        for path in files:
            handle = stack.enter_context(
                safe_open(str(path), framework="pt", device="cpu", backend="pread")
            )
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                state[key] = handle.get_slice(key)
        yield state


def load_causal_lm(model_dir: Path, *, by_tensor: bool, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)``, locally, without remote code.

    With ``by_tensor`` (CPU loading) the weights are read tensor by tensor (see the module's
    docstring); the model is the same, bit for bit, as the stock loading gives
    (tests/appliance/training/test_weights.py). Folders whose weights are not safetensors by
    transformers' names load the stock way.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    model_dir = Path(model_dir)
    local: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    files = checkpoint_files(model_dir) if by_tensor else None
    if files is None:
        return AutoModelForCausalLM.from_pretrained(model_dir, **local, **kwargs)
    from transformers.models.auto.auto_factory import _get_model_class

    config = AutoConfig.from_pretrained(model_dir, **local)
    try:
        generation = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:  # as stock: made from config.json
        generation = GenerationConfig.from_pretrained(
            model_dir,
            config_file_name="config.json",
            _from_model_config=True,
            local_files_only=True,
        )
    model_class = _get_model_class(config, AutoModelForCausalLM._model_mapping)
    with lazy_state(files) as state:
        model = model_class.from_pretrained(
            None,
            config=config,
            state_dict=state,
            generation_config=generation,
            trust_remote_code=False,
            **kwargs,
        )
    model.config.name_or_path = str(model_dir)  # what the stock loading records (peft reads it)
    return model
