"""Token statistics of a dataset version against a base model's tokenizer and chat template.

Only the tokenizer is loaded (``local_files_only``, never remote code), and the rows stay in
memory: chat rows are rendered with the model's chat template, exactly as training will.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.datasets.canonical import Row, content, summary
from appliance.errors import DatasetError, NotFoundError, UsageError
from appliance.workspace import Workspace

DEFAULT_MAX_LENGTH = 2048
_BATCH = 512


def model_folder(ws: Workspace, reg: Any, model: str) -> tuple[Path, str]:
    """The folder to load the tokenizer of ``model`` from, and how to name it in output.

    ``model`` is a base model name from the registry, or else the path of a Hugging Face
    model folder (for a model not imported yet).

    Raises:
        NotFoundError: neither a registered model nor a folder.
    """
    try:
        row = reg.base_model(model)
    except NotFoundError as exc:
        path = Path(model).expanduser()
        if path.is_dir():
            return path.absolute(), f"folder {path.absolute()}"
        raise NotFoundError(f"{exc}; or give the path of a model folder") from None
    from appliance.models.use import model_folder as folder_of

    return folder_of(ws, row), f"model {model}"


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer of the model in ``folder``, from local files only.

    Raises:
        DatasetError: the folder has no usable tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"cannot load the tokenizer from {folder} ({reason}); check that the model folder "
            "has its tokenizer files"
        ) from None


def token_counts(rows: Sequence[Row], tokenizer: Any) -> list[int]:
    """Tokens per example: chat rows through the chat template, text rows as plain text."""
    counts: list[int] = []
    chat = any("messages" in r for r in rows)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "this model's tokenizer has no chat template, so chat examples cannot be measured "
            "(or trained); choose an instruct/chat model"
        )
    for start in range(0, len(rows), _BATCH):
        batch = [content(r) for r in rows[start : start + _BATCH]]
        if chat:
            texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in batch]
            # The template already writes any BOS token; adding special tokens would double it.
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer([r["text"] for r in batch], add_special_tokens=True)["input_ids"]
        counts.extend(len(x) for x in ids)
    return counts


def token_stats(rows: Sequence[Row], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """min, median, p95 and max tokens per example, and how many exceed ``max_length``."""
    if max_length < 1:
        raise UsageError("--max-length must be a positive number of tokens")
    counts = token_counts(rows, tokenizer)
    return {
        **summary(counts),
        "total": sum(counts),
        "max_length": max_length,
        "over_max_length": sum(1 for c in counts if c > max_length),
    }
