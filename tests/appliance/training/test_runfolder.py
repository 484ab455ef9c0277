"""The run folder: one description (meta.json), kept whole by the registry and the launcher, and
runs of the earlier layout (run.json, session.json, config.json) still listing, settling and
resuming."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance.errors import TrainingError
from appliance.folders import read_meta
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training import runs
from appliance.training.runfolder import LEGACY_FILES, RunFolder
from tests.helpers.training import make_workspace, new_run, run_folder, tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Any:
    torch.set_num_threads(1)
    return make_workspace(tmp_path_factory.mktemp("runfolder"), tiny_llama)


def _registry(vault: Any) -> Registry:
    return Registry.open(vault.ws, audit_key=vault.audit_key)


def to_earlier_layout(folder: Path, metrics_offset: int = 0) -> None:
    """Rewrite a run folder as the version before this layout left it."""
    meta = json.loads((folder / "meta.json").read_text())
    launch, record = meta.pop("launch"), meta["record"]
    (folder / "meta.json").write_text(json.dumps(meta))
    spec = {
        "run_id": record["id"],
        "model": record["base_model"],
        "model_dir": launch["model_dir"],
        "dataset": record["dataset"],
        "dataset_version": record["dataset_version"],
        "dataset_path": launch["dataset_path"],
        "dataset_object_id": launch["dataset_object_id"],
        "dataset_sha256": record["dataset_sha256"],
        "adapter_name": launch["adapter_name"],
        "format": 1,
    }
    (folder / "run.json").write_text(json.dumps(spec, indent=2))
    legacy = {"pid": None, "metrics_offset": metrics_offset, "launched": 1.0}
    (folder / "session.json").write_text(json.dumps(legacy))
    (folder / "config.json").write_text(json.dumps(record["config"]))


def test_registry_changes_keep_the_launch_section(setup: Any) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config(), adapter="kept")
    folder = RunFolder(run_folder(vault, run_id))
    launch = folder.launch()
    assert launch.adapter_name == "kept"
    with _registry(vault) as reg, vault.ws.writer("test"):
        reg.runs.update(run_id, state="failed", failure_reason="for the test")
    assert folder.launch() == launch  # the registry rewrote its record and kept the rest
    kind, record = read_meta(folder.path)
    assert (kind, record["state"], record["failure_reason"]) == ("run", "failed", "for the test")
    spec = folder.spec()
    assert (spec.run_id, spec.model, spec.dataset_ref) == (run_id, "tiny", "facts@1")
    assert folder.config() == tiny_config()


def test_a_folder_without_a_description_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"meta.json is missing: this is not a run folder"):
        RunFolder(tmp_path).spec()
    (tmp_path / "meta.json").write_text('{"kind": "run", "format": 1, "record": {"id": "r"}}')
    with pytest.raises(TrainingError, match="has no launch section"):
        RunFolder(tmp_path).launch()
    assert RunFolder(tmp_path).run_id() == "r"


def test_a_run_of_the_earlier_layout_settles_from_its_launch_offset(setup: Any) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config(), adapter="older")
    folder = RunFolder(run_folder(vault, run_id))
    # Two launches in metrics.jsonl: the first failed, the second (after the offset) stopped.
    first = ev.Failed(run_id=run_id, message="the first launch's failure").to_json() + "\n"
    second = ev.Stopped(run_id=run_id, step=4, checkpoint="step-00000004").to_json() + "\n"
    folder.metrics.write_text(first + second)
    to_earlier_layout(folder.path, metrics_offset=len(first))
    gone = subprocess.Popen(["true"])
    gone.wait()
    with _registry(vault) as reg, vault.ws.writer("test"):
        reg.runs.update(run_id, state="running", pid=gone.pid)
    assert folder.launch().metrics_offset == len(first)
    assert folder.launch().adapter_name == "older"
    with _registry(vault) as reg:
        (outcome,) = [o for o in runs.reconcile(vault, reg) if o.run_id == run_id]
        listed = {r["id"]: r["state"] for r in reg.runs.all()}
    assert (outcome.state, outcome.message) == ("stopped", "stopped at step 4")
    assert listed[run_id] == "stopped"


def test_a_run_of_the_earlier_layout_resumes_and_moves_to_the_new_one(setup: Any) -> None:
    _ws, vault = setup
    config = tiny_config("max_steps=3", "warmup_steps=0", "save_every=0", "eval_every=0")
    run_id = new_run(vault, config, adapter="migrated")
    folder = RunFolder(run_folder(vault, run_id))
    to_earlier_layout(folder.path)
    assert folder.spec().adapter_name == "migrated"  # read from run.json
    with _registry(vault) as reg:
        process = runs.launch(vault, reg, run_id, threads=1)
        seen = list(process.events())
        outcome = runs.wait_settled(process, vault, reg)
    assert outcome.state == "finished", (outcome, seen)
    assert outcome.adapter == "migrated@1"
    assert not any((folder.path / name).exists() for name in LEGACY_FILES)
    meta = json.loads(folder.meta.read_text())
    assert meta["launch"]["adapter_name"] == "migrated"
    assert meta["record"]["state"] == "finished"
