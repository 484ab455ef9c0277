"""What every export carries besides its weights: ``MANIFEST`` and a model card (``README.md``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.destinations import MANIFEST
from appliance.export import verify
from appliance.folders import tree_files
from appliance.fsutil import sha256_file

if TYPE_CHECKING:
    from appliance.registry.rows import LineageRow

CARD = "README.md"

_LOADING = {
    "merged": (
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("{out}", local_files_only=True)\n'
        'tokenizer = AutoTokenizer.from_pretrained("{out}", local_files_only=True)\n```\n\n'
        "vLLM: `vllm serve {out}`"
    ),
    "adapter": (
        "```python\nfrom peft import PeftModel\n"
        'model = PeftModel.from_pretrained(base_model, "{out}", local_files_only=True)\n```\n\n'
        "vLLM: `vllm serve BASE_MODEL_FOLDER --enable-lora --lora-modules {name}={out}` "
        "(rank {rank})"
    ),
    "gguf": (
        "llama.cpp: `llama-cli -m {out}/{gguf} -cnv`; "
        "Ollama: `cd {out} && ollama create {name} -f Modelfile && ollama run {name}`"
    ),
}


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the manifest itself."""
    return {rel: sha256_file(folder / rel) for rel in tree_files(folder) if rel != MANIFEST}


def manifest(
    folder: Path, *, export: dict[str, Any], verification: dict[str, Any]
) -> dict[str, Any]:
    """The ``MANIFEST`` document: the export's settings, its verification and every file's hash.

    ``files`` maps each relative path to its hex sha256 (``sha256sum FILE`` shows the same).
    """
    return {
        "format": 1,
        "export": export,
        "verification": verification,
        "files": file_hashes(folder),
    }


def write_manifest(folder: Path, document: dict[str, Any]) -> None:
    with open(folder / MANIFEST, "x", encoding="utf-8") as handle:
        handle.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


def check_manifest(folder: Path) -> list[str]:
    """Files missing, changed or added since the manifest was written (empty: intact)."""
    document = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    expected: dict[str, str] = document["files"]
    actual = file_hashes(folder)
    problems = [f"{rel} is missing" for rel in sorted(set(expected) - set(actual))]
    problems += [f"{rel} was added" for rel in sorted(set(actual) - set(expected))]
    problems += [
        f"{rel} changed"
        for rel in sorted(expected)
        if rel in actual and actual[rel] != expected[rel]
    ]
    return problems


def model_card(
    *,
    lineage: LineageRow,
    export: dict[str, Any],
    verification: dict[str, Any],
    out: Path,
) -> str:
    """The ``README.md`` of an export: what it is, where it came from, how it was checked."""
    base: Mapping[str, Any] = lineage["base_model"] or {}
    data: Mapping[str, Any] = lineage["dataset"] or {}
    run: Mapping[str, Any] = lineage["run"] or {}
    lines = [
        f"# {lineage['ref']} ({export['format']} export)",
        "",
        f"A LoRA adapter fine-tuned on private data, exported as **{export['format']}** "
        f"by the offline fine-tuning appliance {__version__} on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Lineage",
        "",
        "| | |",
        "|---|---|",
        f"| adapter | {lineage['ref']} (sha256 `{lineage['sha256']}`) |",
        f"| base model | {base.get('name', '-')} ({base.get('architecture', '-')}, "
        f"sha256 `{base.get('sha256', '-')}`) |",
        f"| dataset | {data.get('name', '-')}@{data.get('version', '-')} "
        f"({data.get('rows', '-')} rows, sha256 `{data.get('sha256', '-')}`) |",
        f"| run | {run.get('id', '-')} ({run.get('state', '-')}, ended "
        f"{run.get('finished_at') or '-'}) |",
        f"| adapter created | {lineage['created_at']} by {lineage['created_by']} |",
        f"| metrics | {json.dumps(lineage.get('metrics') or {}, sort_keys=True)} |",
        f"| libraries | {json.dumps(lineage.get('lib_versions') or {}, sort_keys=True)} |",
        "",
        "Training configuration:",
        "",
        "```json",
        json.dumps(lineage.get("config") or {}, indent=2, sort_keys=True),
        "```",
        "",
        "## Export",
        "",
        "```json",
        json.dumps(export, indent=2, sort_keys=True),
        "```",
        "",
        "## Verification",
        "",
        "Reloaded from these files and compared with the adapter applied to the unmerged base in "
        "the same precision: " + verify.verification_line(verification) + ".",
        "",
        "## Loading it",
        "",
        _LOADING[export["format"]].format(
            out=out,
            name=lineage["name"],
            gguf=export.get("gguf_file", ""),
            rank=export.get("lora_rank", "-"),
        ),
        "",
        f"`{MANIFEST}` lists the sha256 of every file; the data this model was trained on is "
        "confidential: keep the export where the data may be.",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, text: str) -> None:
    with open(folder / CARD, "x", encoding="utf-8") as handle:
        handle.write(text)
