"""Builders of registry content for tests: a fake base model, datasets, runs, adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance import adapter_folders
from appliance.registry import Registry

LIBS = {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2", "bitsandbytes": "0.50.2"}


def add_fake_model(reg: Registry, name: str = "base") -> int:
    """A base model row without files (for registry-only tests)."""
    return reg.models.add(
        name,
        format="hf",
        source=f"/nowhere/{name}",
        linked=False,
        path=f"models/{name}/files",
        sha256="ab" * 32,
        manifest={},
        architecture="LlamaForCausalLM",
        model_type="llama",
        parameters=1000,
        dtype="float32",
        context_length=512,
        vocab_size=384,
        has_chat_template=True,
        total_bytes=4000,
    )


def add_dataset(reg: Registry, name: str = "docs", **extra: Any) -> int:
    """A dataset version row as the dataset helper would write it."""
    fields: dict[str, Any] = {
        "object_id": "00" * 16,
        "path": f"datasets/{name}.enc",
        "sha256": "cd" * 32,
        "file_sha256": "ef" * 32,
        "kind": "chat",
        "format": "jsonl",
        "source_name": f"{name}.jsonl",
        "rows": 10,
        "train_rows": 9,
        "eval_rows": 1,
        "duplicates_removed": 0,
        "skipped_rows": 1,
        "skipped_detail": [{"line": 3, "field": None, "problem": "empty line"}],
        "chars": 1234,
        "eval_fraction": 0.1,
        "seed": 7,
        "stats": {"tokens": 99},
    }
    fields.update(extra)
    return reg.datasets.add_version(name, **fields)


def add_adapter(
    reg: Registry,
    name: str = "contracts",
    *,
    base: str = "base",
    dataset: str | None = "docs",
    dataset_version: int | None = None,
    eval_loss: float = 1.25,
    content: bytes = b"adapter weights",
    config: dict[str, Any] | None = None,
) -> tuple[str, int]:
    """A finished run and its adapter version (moved in from tmp/); returns (run id, version)."""
    run_id = reg.runs.add(
        base_model=base,
        dataset=dataset,
        dataset_version=dataset_version,
        config=config if config is not None else {"lora_r": 8, "lr": 2e-4, "seed": 3},
        seed=3,
    )
    reg.runs.update(run_id, state="running", pid=4242)
    reg.runs.update(run_id, state="finished")
    staged = reg.ws.tmp_dir / f"adapter-{run_id}"
    staged.mkdir()
    (staged / "adapter.enc").write_bytes(content)
    version = adapter_folders.place(
        reg,
        name,
        staged,
        run_id=run_id,
        metrics={"eval_loss": eval_loss, "train_loss": 1.0},
        lib_versions=LIBS,
    )
    return run_id, version


def adapter_dir(reg: Registry, ref: str) -> Path:
    return reg.ws.home / reg.adapters.version(ref)["path"]
