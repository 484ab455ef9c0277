"""Builders for adapter versions with full lineage, before (and besides) real training runs.

An adapter version needs a base model, a dataset version and a run in the registry, then the
LoRA weights stored through the vault. These helpers create each piece directly:

    vault, reg = open_store(ws)
    ref = make_adapter(vault, reg, tiny_llama, model_name="tiny", adapter_name="legal")
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance import adapters
from appliance.adapters import AdapterWeights
from appliance.errors import NotFoundError
from appliance.models import import_model
from appliance.registry import Registry
from appliance.registry.rows import BaseModelRow
from appliance.vault import Vault
from appliance.workspace import Workspace

PASSPHRASE = "adapter builder passphrase"
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def open_store(ws: Workspace, passphrase: str = PASSPHRASE) -> tuple[Vault, Registry]:
    """Create the vault of ``ws`` (fast KDF) and open its registry with the audit key."""
    vault = Vault.create(ws, passphrase, "tester", target_s=0)
    return vault, Registry.open(ws, audit_key=vault.audit_key)


def tiny_adapter_store(folder: Path, tiny_llama: Path) -> tuple[Vault, Registry, str]:
    """A new workspace in ``folder`` with base model ``tiny`` and one random adapter ``legal``.

    Returns the vault, the open registry (the caller closes it) and the adapter's ``NAME@N``.
    """
    from appliance import workspace

    ws, _ = workspace.init(folder / "ws")
    vault, reg = open_store(ws)
    ref = make_adapter(vault, reg, tiny_llama, model_name="tiny", adapter_name="legal")
    return vault, reg, ref


def ensure_base_model(ws: Workspace, reg: Registry, source: Path, name: str) -> BaseModelRow:
    """The base model ``name``, imported from ``source`` (folder or .gguf) if not there yet."""
    try:
        return reg.models.get(name)
    except NotFoundError:
        return import_model(ws, reg, source, name)


def add_dataset_version(reg: Registry, name: str = "contracts", rows: int = 120) -> int:
    """A dataset version row with made-up but plausible fields (no data behind it)."""
    digest = hashlib.sha256(f"{name}:{rows}".encode()).hexdigest()
    return reg.datasets.add_version(
        name,
        sha256=digest,
        file_sha256=digest,
        kind="chat",
        format="jsonl",
        source_name=f"{name}.jsonl",
        rows=rows,
        train_rows=rows - rows // 10,
        eval_rows=rows // 10,
        eval_fraction=0.1,
        seed=7,
    )


def add_finished_run(
    reg: Registry,
    base_model: str,
    *,
    dataset: str = "contracts",
    config: dict[str, Any] | None = None,
    seed: int = 7,
) -> str:
    """A finished run of ``base_model`` on a new version of ``dataset``; returns its id."""
    version = add_dataset_version(reg, dataset)
    return reg.runs.add(
        base_model=base_model,
        dataset=dataset,
        dataset_version=version,
        config=config or {"method": "lora", "lora": {"r": 4, "alpha": 8}, "epochs": 1},
        seed=seed,
        state="finished",
    )


def random_lora(
    model_dir: Path,
    *,
    r: int = 4,
    alpha: int = 8,
    targets: Sequence[str] = LLAMA_TARGETS,
    std: float = 0.2,
    seed: int = 0,
) -> AdapterWeights:
    """A PEFT LoRA for the model in ``model_dir`` whose ``lora_B`` is random and non-zero.

    PEFT initialises ``lora_B`` to zero, which would make any adapter a no-op and every
    comparison against the base trivially true; ``std`` sets how far the adapter moves outputs.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False, dtype=torch.float32
    )
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none"
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, std)
    weights = adapters.from_peft_model(model)
    del model, base
    return weights


def make_adapter(
    vault: Vault,
    reg: Registry,
    model_source: Path,
    *,
    model_name: str = "tiny",
    adapter_name: str = "legal",
    weights: AdapterWeights | None = None,
    metrics: dict[str, Any] | None = None,
    **lora: Any,
) -> str:
    """Store a random LoRA of ``model_source`` as the next version of ``adapter_name``.

    Imports the base model (once per workspace), records a dataset version and a finished run,
    and stores the adapter with that lineage. ``lora`` goes to :func:`random_lora`.

    Returns:
        The new version's reference, ``NAME@N``.
    """
    model = ensure_base_model(vault.ws, reg, model_source, model_name)
    run_id = add_finished_run(reg, model["name"])
    if weights is None:
        folder = vault.ws.home / model["path"] if not model["linked"] else Path(model["path"])
        weights = random_lora(folder, **lora)
    version = adapters.store(
        vault,
        reg,
        adapter_name,
        weights,
        run_id=run_id,
        metrics=metrics or {"eval_loss": 1.25, "train_loss": 1.1},
        lib_versions=_lib_versions(),
    )
    return f"{adapter_name}@{version}"


def build_tiny_qwen2(out: Path, tokenizer_source: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2 (q/k/v biases, non-zero) with the tokenizer of ``tokenizer_source``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, local_files_only=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # zero at init: make the biases matter
                param.normal_(0, 0.1)
    model.save_pretrained(out)
    return out


def _lib_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft")}
