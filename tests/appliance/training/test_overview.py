"""Runs as a list shows them: lost runs, adapters, messages; settings the model cannot take;
the end of a run's log."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance.registry import Registry
from appliance.training import runs
from appliance.training.config import ConfigError
from appliance.training.overview import run_summaries
from appliance.training.runfolder import RunFolder
from tests.helpers.training import make_workspace, new_run, tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Any:
    return make_workspace(tmp_path_factory.mktemp("overview"), tiny_llama)


def test_a_run_whose_process_is_gone_is_lost_settled_or_not(setup: Any) -> None:
    _ws, vault = setup
    queued = new_run(vault, tiny_config(), adapter="queued")
    gone = subprocess.Popen(["true"])
    gone.wait()
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        lost = reg.runs.add(
            base_model="tiny", config={}, dataset="facts", state="running", pid=gone.pid
        )
        failed = reg.runs.add(base_model="tiny", config={}, dataset="facts", state="failed")
        reg.runs.update(failed, failure_reason="dataset facts version 1 was deleted")
        found = {s.run_id: s for s in run_summaries(vault.ws.home, reg)}
        assert (found[lost].state, found[lost].message, found[lost].live) == (
            "lost",
            "process lost",
            False,
        )
        assert (found[failed].state, found[failed].message) == (
            "failed",
            "dataset facts version 1 was deleted",
        )
        assert found[queued].state == "queued"
        assert found[queued].dataset == "facts@1"
        assert found[queued].folder == vault.ws.home / "runs" / queued
        # Settled as "process lost", it is still shown as lost.
        runs.reconcile(vault, reg)
        again = {s.run_id: s for s in run_summaries(vault.ws.home, reg)}
        assert (again[lost].state, again[lost].message) == ("lost", "process lost")
        assert reg.runs.get(lost)["state"] == "failed"
        # Newest first.
        order = [s.run_id for s in run_summaries(vault.ws.home, reg)]
        assert order.index(failed) < order.index(queued)


def test_sequences_longer_than_the_models_context_are_refused(setup: Any) -> None:
    _ws, vault = setup
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        before = len(reg.runs.all())
        with pytest.raises(ConfigError) as info:
            runs.create_run(
                vault,
                reg,
                model="tiny",
                dataset="facts",
                adapter_name="long",
                config=tiny_config("max_seq_length=1024"),
            )
        assert str(info.value) == (
            "invalid training config: data.max_seq_length is 1024, longer than the 512-token "
            "context of model tiny; set it to 512 or less"
        )
        assert len(reg.runs.all()) == before  # nothing was made
        runs.check_for_model(reg.models.get("tiny"), tiny_config("max_seq_length=512"))


def test_log_tail_keeps_what_a_terminal_shows(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    assert folder.log_tail() == []
    lines = [f"line {i}" for i in range(30)]
    folder.log.write_text("\n".join(lines) + "\nprogress 10%\rprogress 50%\r\n\n")
    assert folder.log_tail(3) == ["line 28", "line 29", "progress 50%"]
