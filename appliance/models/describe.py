"""What a checked model folder is: weights, tokenizer, architecture, and the recorded facts.

Every Hugging Face call here is local only (``local_files_only=True``) and never trusts remote
code; the folder has already passed :mod:`appliance.models.safety`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.errors import ModelImportError
from appliance.models.safety import TORCH_DTYPE_NAMES, SafetensorsInfo, check_safetensors

INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


def weight_files(folder: Path) -> list[Path]:
    """The top-level ``.safetensors`` files, checked against the shard index when there is one.

    Raises:
        ModelImportError: no safetensors weights, or the index names a missing file.
    """
    shards = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            named = {str(v) for v in weight_map.values()}
        except (
            OSError,
            UnicodeDecodeError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
        ):
            raise ModelImportError(
                f"refused {index}: not a valid shard index (needs a weight_map object)"
            ) from None
        for name in sorted(named):
            if "/" in name or "\\" in name or name.startswith("."):
                raise ModelImportError(f"refused {index}: shard name {name!r} leaves the folder")
            if not (folder / name).is_file():
                raise ModelImportError(
                    f"refused {index}: it names the shard {name}, which is missing from {folder}"
                )
    if not shards:
        raise ModelImportError(
            f"refused {folder}: no .safetensors weights found (a Hugging Face model folder needs "
            "config.json and *.safetensors; for a single GGUF file give its path)"
        )
    return shards


def check_weights(folder: Path) -> list[SafetensorsInfo]:
    """Header-check every weight file (see :func:`check_safetensors`)."""
    return [check_safetensors(path) for path in weight_files(folder)]


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a folder without any tokenizer file."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelImportError(
            f"refused {folder}: no tokenizer (expected one of {', '.join(TOKENIZER_FILES)}); "
            "copy the model's tokenizer files into the folder"
        )


def load_transformers_config(folder: Path) -> Any:
    """The model's transformers config, read locally without remote code."""
    from transformers import AutoConfig

    path = folder / "config.json"
    if not path.is_file():
        raise ModelImportError(
            f"refused {folder}: no config.json (not a Hugging Face model folder)"
        )
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises ValueError, KeyError, OSError...
        raise ModelImportError(
            f"refused {path}: transformers cannot read this config ({_first_line(exc)})"
        ) from None


def check_architecture(config: Any, folder: Path) -> str:
    """The causal-LM class name for ``config``, after building the model on the meta device.

    Raises:
        ModelImportError: the architecture is unknown to transformers, not a causal language
            model, or cannot be built.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = folder / "config.json"
    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelImportError(
            f"refused {path}: model type {model_type!r} is not a causal language model this "
            "version of transformers can build"
        )
    architecture = next(
        (a for a in architectures if a in known),
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[str(model_type)],
    )
    if architectures and architectures[0] not in known:
        raise ModelImportError(
            f"refused {path}: architecture {architectures[0]!r} is not one transformers can build "
            "as a causal language model"
        )
    try:
        # The meta device allocates nothing: this only proves the class can be instantiated.
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:
        raise ModelImportError(
            f"refused {path}: transformers cannot build {architecture} from it ({_first_line(exc)})"
        ) from None
    return str(architecture)


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer, loaded locally without remote code."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelImportError(
            f"refused {folder}: its tokenizer cannot be loaded ({_first_line(exc)})"
        ) from None


def model_facts(
    folder: Path, infos: Sequence[SafetensorsInfo], config: Any, tokenizer: Any, architecture: str
) -> dict[str, Any]:
    """The facts the registry records about a model folder."""
    elements: dict[str, int] = {}
    for info in infos:
        for dtype, count in info.elements_by_dtype.items():
            elements[dtype] = elements.get(dtype, 0) + count
    main_dtype = max(elements, key=lambda k: elements[k]) if elements else None
    text_config = getattr(config, "text_config", None) or config
    context = next(
        (getattr(text_config, k) for k in CONTEXT_KEYS if getattr(text_config, k, None)), None
    )
    chat_template = (
        getattr(tokenizer, "chat_template", None) or (folder / "chat_template.jinja").is_file()
    )
    return {
        "architecture": architecture,
        "model_type": getattr(config, "model_type", None),
        "parameters": sum(info.parameters for info in infos),
        "dtype": TORCH_DTYPE_NAMES.get(main_dtype, main_dtype) if main_dtype else None,
        "context_length": int(context) if context else None,
        "vocab_size": getattr(text_config, "vocab_size", None),
        "has_chat_template": bool(chat_template),
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
