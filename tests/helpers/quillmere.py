"""The end-to-end run: SmolLM2 trained with QLoRA on the made-up Quillmere facts, on CPU.

Stopped after a checkpoint, then resumed to the end, exactly as a user would; the events of
both launches are kept for the assertions. ``tests/e2e/conftest.py`` makes it a session-scoped
fixture, so the training test and the tests that use its adapter share one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from appliance import datasets, workspace
from appliance.models import import_model
from appliance.registry import Registry
from appliance.registry.rows import BaseModelRow
from appliance.training import events as ev
from appliance.training import runs
from appliance.training.settings import build_config
from appliance.vault import Vault
from tests.helpers.training import ORGFACTS, PASS

SETTINGS = [
    "target_modules=all-linear",
    "rank=16",
    "alpha=32",
    "max_steps=36",
    "micro_batch_size=4",
    "gradient_accumulation_steps=1",
    "lr=2e-3",
    "warmup_steps=2",
    "eval_every=0",
    "save_every=18",
    "max_seq_length=256",
    "gradient_checkpointing=false",
]
STOP_AT_STEP = 20


@dataclass
class QuillmereRun:
    """The workspace after the run, and what the run reported."""

    ws: workspace.Workspace
    vault: Vault
    model_row: BaseModelRow
    run_id: str
    first: list[ev.Event]
    """Events of the first launch (stopped at step ~20)."""
    first_outcome: Any
    state_after_first: str
    """The run's registry state between the launches."""
    second: list[ev.Event]
    """Events of the resumed launch (to the end)."""
    second_outcome: Any


def train_quillmere(root: Path, smollm2_gguf: Path) -> QuillmereRun:
    """SmolLM2-135M-Instruct + QLoRA on ``orgfacts`` (10% eval), adapter ``quillmere@1``."""
    torch.set_num_threads(1)
    ws, _ = workspace.init(root / "ws")
    vault = Vault.create(ws, PASS, "tester", target_s=0)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        model_row = import_model(ws, reg, smollm2_gguf, "smollm2")
        datasets.import_file(vault, reg, ORGFACTS / "orgfacts.jsonl", "orgfacts", eval_fraction=0.1)
        run_id = runs.create_run(
            vault,
            reg,
            model="smollm2",
            dataset="orgfacts",
            adapter_name="quillmere",
            config=build_config("quick-test", SETTINGS),
        )
        # First launch: stopped after a checkpoint, as Ctrl-C or 'run stop' would.
        process = runs.launch(vault, reg, run_id)
        first: list[ev.Event] = []
        for event in process.events():
            first.append(event)
            if isinstance(event, ev.Step) and event.step == STOP_AT_STEP:
                process.stop()
        first_outcome = runs.wait_settled(process, vault, reg)
        state_after_first = reg.runs.get(run_id)["state"]
        # Second launch: resumed from that checkpoint to the end.
        second: list[ev.Event] = []
        second_outcome = None
        if first_outcome.state == "stopped":
            process = runs.launch(vault, reg, run_id)
            second = list(process.events())
            second_outcome = runs.wait_settled(process, vault, reg)
    return QuillmereRun(
        ws,
        vault,
        model_row,
        run_id,
        first,
        first_outcome,
        state_after_first,
        second,
        second_outcome,
    )
