"""Builders for training tests: a workspace with the tiny model and a small chat dataset."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from appliance import adapters, datasets, workspace
from appliance.models import import_model
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training import runs
from appliance.training.config import TrainConfig
from appliance.training.runfolder import ADAPTER_FILE, RUN_KEY_FILE, RunFolder
from appliance.training.settings import build_config
from appliance.vault import Vault
from appliance.vault.objects import read_object

PASS = "training test passphrase"
ORGFACTS = Path(__file__).resolve().parents[1] / "data" / "orgfacts"


def chat_rows(n: int = 24) -> list[dict[str, Any]]:
    """Short question/answer conversations with a pattern a tiny model can start to learn."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus one?"},
                {"role": "assistant", "content": f"The answer is {i + 1}."},
            ]
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_workspace(
    root: Path, model_dir: Path, rows: list[dict[str, Any]] | None = None
) -> tuple[workspace.Workspace, Vault]:
    """A workspace with a vault, base model ``tiny`` and dataset ``facts`` (20% eval)."""
    ws, _ = workspace.init(root / "ws")
    vault = Vault.create(ws, PASS, "tester", target_s=0)
    source = write_jsonl(root / "facts.jsonl", rows if rows is not None else chat_rows())
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        import_model(ws, reg, model_dir, "tiny")
        datasets.import_file(vault, reg, source, "facts", eval_fraction=0.2)
    return ws, vault


def tiny_config(*assignments: str, method: str = "qlora") -> TrainConfig:
    """A short run on the tiny model; a high learning rate so the weights move visibly."""
    base = [
        f"method={method}",
        "max_steps=8",
        "micro_batch_size=2",
        "gradient_accumulation_steps=2",
        "lr=1e-2",
        "warmup_steps=2",
        "warmup_ratio=0",
        "save_every=2",
        "eval_every=3",
        "keep_last=3",
        "max_seq_length=128",
        "seed=7",
    ]
    return build_config("quick-test", [*base, *assignments])


def new_run(vault: Vault, config: TrainConfig, adapter: str = "facts-adapter") -> str:
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        return runs.create_run(
            vault, reg, model="tiny", dataset="facts", adapter_name=adapter, config=config
        )


class CaptureLog(ev.EventLog):
    """An EventLog that also keeps the events and calls ``hook`` with each one."""

    def __init__(self, path: Path | None, hook: Any = None) -> None:
        self.buffer = io.StringIO()
        super().__init__(path, self.buffer)
        self.captured: list[ev.Event] = []
        self.hook = hook

    def emit(self, event: ev.Event) -> None:
        super().emit(event)
        self.captured.append(event)
        if self.hook is not None:
            self.hook(event)


def trainer_for(vault: Vault, run_id: str, log: ev.EventLog) -> Any:
    """A set-up :class:`Trainer` for ``run_id`` in this process, prepared as a launch would be
    and with the keys the parent would hand over."""
    from appliance.training.loop import Trainer
    from appliance.training.worker import decrypt_run_rows, read_keys

    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        plan = runs.prepare_launch(vault, reg, run_id)
    folder = RunFolder(plan.folder)
    spec = folder.spec()
    keys = read_keys(io.StringIO(plan.keys.decode()))
    trainer = Trainer(
        spec=spec,
        config=folder.config(),
        run_dir=folder.path,
        run_key=keys["run_key"],
        rows=decrypt_run_rows(spec, keys["dataset_key"]),
        events=log,
    )
    trainer.setup()
    return trainer


def run_folder(vault: Vault, run_id: str) -> Path:
    return vault.ws.runs_dir / run_id


def run_key(vault: Vault, run_id: str) -> bytes:
    return bytes(vault.read(run_folder(vault, run_id) / RUN_KEY_FILE))


def folder_adapter(vault: Vault, run_id: str) -> dict[str, torch.Tensor]:
    """The tensors of the adapter a run left in its folder (before registration)."""
    blob = read_object(run_folder(vault, run_id) / ADAPTER_FILE, run_key(vault, run_id))
    return adapters.unpack(blob, "adapter").tensors


def registered_adapter(vault: Vault, ref: str) -> dict[str, torch.Tensor]:
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        return adapters.load(vault, reg, ref)[1].tensors


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def train_adapter(vault: Vault, config: TrainConfig, adapter: str = "facts-adapter") -> str:
    """Train a whole run in this process (events to its ``metrics.jsonl``) and register its
    adapter as the parent would; returns ``NAME@N``."""
    from appliance.training.runs import finalize

    run_id = new_run(vault, config, adapter)
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        reg.runs.update(run_id, state="running", pid=None)
    with ev.EventLog(run_folder(vault, run_id) / ev.METRICS_FILE) as log:
        trainer = trainer_for(vault, run_id, log)
        assert trainer.run() == "finished"
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        outcome = finalize(vault, reg, run_id)
    assert outcome.adapter is not None, outcome.message
    return outcome.adapter
