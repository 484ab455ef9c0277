"""After an export: the files it wrote (from its ``MANIFEST``) and the commands that serve them.

The commands are those of ``docs/serving.md`` filled in with the export's own paths and names,
for the desktop app's "copy the serving command" button; they run offline. Nothing here loads
weights.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import IntegrityError

MANIFEST = "MANIFEST"
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``--max-lora-rank``."""


@dataclass(frozen=True)
class ExportedFile:
    """One file of an export folder."""

    path: str
    """Relative to the export folder."""
    bytes: int
    sha256: str
    """As listed in the ``MANIFEST`` (``sha256sum FILE`` prints the same)."""


def exported_files(folder: Path) -> list[ExportedFile]:
    """The files an export's ``MANIFEST`` lists, with their sizes now.

    Raises:
        IntegrityError: the folder has no readable ``MANIFEST``, or a listed file is missing.
    """
    path = Path(folder) / MANIFEST
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        listed: dict[str, str] = document["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path} is not a readable export MANIFEST ({exc})") from None
    files = []
    for rel, digest in sorted(listed.items()):
        try:
            size = (Path(folder) / rel).stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"{Path(folder) / rel} is listed in {path} but missing") from None
        files.append(ExportedFile(rel, size, str(digest)))
    return files


@dataclass(frozen=True)
class ServingCommand:
    """One way to serve an export."""

    tool: str
    """``llama.cpp``, ``Ollama``, ``vLLM`` or ``transformers``."""
    label: str
    """What it does, for a menu: e.g. "llama.cpp: chat in the terminal"."""
    command: str
    """Shell command, or Python code for transformers / peft."""


def _lora_rank_flag(rank: Any) -> int:
    r = int(rank) if isinstance(rank, int | float) and rank > 0 else 16
    return next((v for v in VLLM_LORA_RANKS if v >= r), VLLM_LORA_RANKS[-1])


def serving_commands(
    record: dict[str, Any], *, name: str, base_folder: Path | None = None
) -> list[ServingCommand]:
    """The commands that serve what an export wrote.

    Args:
        record: the export record (:meth:`ExportResult.to_json`, the ``export`` job's result).
        name: the name to serve it under (the adapter's name).
        base_folder: the base model's folder, for an adapter export (vLLM and peft load the
            adapter on it); a placeholder is written when unknown.
    """
    out = str(record["path"])
    details: dict[str, Any] = record.get("details") or {}
    q_out = shlex.quote(out)
    fmt = record["format"]
    if fmt == "gguf":
        gguf = shlex.quote(str(Path(out) / str(details.get("gguf_file", ""))))
        commands = [
            ServingCommand(
                "llama.cpp", "llama.cpp: chat in the terminal", f"llama-cli -m {gguf} -cnv"
            ),
            ServingCommand(
                "llama.cpp",
                "llama.cpp: OpenAI-compatible server on port 8080",
                f"llama-server -m {gguf} --jinja --port 8080",
            ),
        ]
        if "Modelfile" in record.get("files", []):
            commands.append(
                ServingCommand(
                    "Ollama",
                    "Ollama: create the model and chat",
                    f"cd {q_out} && ollama create {shlex.quote(name)} -f Modelfile && "
                    f"ollama run {shlex.quote(name)}",
                )
            )
        return commands
    if fmt == "merged":
        return [
            ServingCommand(
                "vLLM",
                "vLLM: OpenAI-compatible server",
                f"HF_HUB_OFFLINE=1 vllm serve {q_out} --served-model-name {shlex.quote(name)}",
            ),
            ServingCommand(
                "transformers",
                "transformers: load in Python",
                "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"tokenizer = AutoTokenizer.from_pretrained({out!r}, local_files_only=True)\n"
                f"model = AutoModelForCausalLM.from_pretrained({out!r}, local_files_only=True, "
                'dtype="auto")',
            ),
        ]
    base = str(base_folder) if base_folder is not None else "BASE_MODEL_FOLDER"
    rank = _lora_rank_flag(details.get("lora_rank"))
    return [
        ServingCommand(
            "vLLM",
            "vLLM: serve the adapter on its base model",
            f"HF_HUB_OFFLINE=1 vllm serve {shlex.quote(base)} --enable-lora --max-lora-rank "
            f"{rank} --lora-modules {shlex.quote(f'{name}={out}')}",
        ),
        ServingCommand(
            "transformers",
            "transformers + peft: load in Python",
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
            f"base = AutoModelForCausalLM.from_pretrained({base!r}, local_files_only=True)\n"
            f"model = PeftModel.from_pretrained(base, {out!r}, local_files_only=True)",
        ),
    ]
