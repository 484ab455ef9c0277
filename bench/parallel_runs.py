"""Shared by bench/scale.py and bench/gpu_check.py: real runs of the appliance on N processes.

A throw-away workspace (vault, registry, a model folder, a dataset of generated chat rows) and
:func:`measure_run`, which starts a run through :func:`appliance.training.runs.launch` exactly as
``appliance train`` does (torchrun's agent, the key hand-over, the event stream) and measures it
from its events: tokens/s of the steps after the first (start-up, compilation and the first
allocation excluded), wall time, the adapter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import datasets, workspace
from appliance.models import import_model
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training import runs
from appliance.training.config import TrainConfig
from appliance.training.placement import Topology
from appliance.vault import Vault

PASS = "benchmark passphrase"


def chat_rows(n: int, words: int = 40) -> list[dict[str, Any]]:
    """Generated question/answer conversations of similar length (no real data)."""
    filler = " ".join(f"w{i % 97}" for i in range(words))
    return [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}: {filler}"},
                {"role": "assistant", "content": f"Answer {i}: {filler}"},
            ]
        }
        for i in range(n)
    ]


def make_workspace(root: Path, model_dir: Path, rows: list[dict[str, Any]]) -> Vault:
    """A workspace holding ``model_dir`` as model ``m`` and ``rows`` as dataset ``d``."""
    ws, _ = workspace.init(root / "ws")
    vault = Vault.create(ws, PASS, "bench", target_s=0)
    source = root / "d.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        import_model(ws, reg, model_dir, "m")
        datasets.import_file(vault, reg, source, "d", eval_fraction=0.0)
    return vault


@dataclass
class MeasuredRun:
    """One run, as measured from its events."""

    state: str
    message: str | None
    tokens_per_s: float
    """Tokens per second of every process together, steps after the first."""
    wall_s: float
    """From the launch to the settled outcome (start-up included)."""
    steps: int
    losses: list[float] = field(default_factory=list)
    adapter: str | None = None
    peak_memory: list[int] = field(default_factory=list)
    """Highest torch allocation per GPU seen in ``memory`` events (one per process)."""


def measure_run(
    vault: Vault, config: TrainConfig, topology: Topology, adapter: str, threads: int | None = None
) -> MeasuredRun:
    """Create a run of ``config`` on ``topology``, follow it to the end, measure it."""
    t0 = time.perf_counter()
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        run_id = runs.create_run(
            vault, reg, model="m", dataset="d", adapter_name=adapter, config=config
        )
        process = runs.launch(vault, reg, run_id, threads=threads, topology=topology)
        steps: list[tuple[float, int]] = []
        losses: list[float] = []
        peaks: dict[int, int] = {}
        for event in process.events():
            if isinstance(event, ev.Step):
                steps.append((event.time, event.tokens_seen or 0))
                losses.append(event.loss)
            elif isinstance(event, ev.Memory):
                for gpu in event.gpus:
                    key = gpu.rank if gpu.rank is not None else gpu.index
                    peaks[key] = max(peaks.get(key, 0), gpu.peak or 0)
        outcome = runs.wait_settled(process, vault, reg)
    wall = time.perf_counter() - t0
    rate = 0.0
    if len(steps) >= 2:
        (t_first, n_first), (t_last, n_last) = steps[0], steps[-1]
        rate = (n_last - n_first) / (t_last - t_first) if t_last > t_first else 0.0
    return MeasuredRun(
        state=outcome.state,
        message=outcome.message,
        tokens_per_s=rate,
        wall_s=wall,
        steps=len(steps),
        losses=losses,
        adapter=outcome.adapter,
        peak_memory=[peaks[k] for k in sorted(peaks)],
    )


def adapter_tensors(vault: Vault, ref: str) -> dict[str, Any]:
    """The registered adapter's tensors, to compare two runs."""
    from appliance import adapters

    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        return adapters.load(vault, reg, ref)[1].tensors


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
