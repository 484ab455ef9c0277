"""Resume: a stopped or killed run ends with the same adapter as an uninterrupted one."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training import runs
from appliance.training.runfolder import CHECKPOINTS_DIR
from tests.helpers.training import (
    CaptureLog,
    folder_adapter,
    make_workspace,
    max_diff,
    new_run,
    registered_adapter,
    run_folder,
    tiny_config,
    trainer_for,
)

# Runs the real worker, but dies by SIGKILL inside the first checkpoint save, after the state
# file is written and before the folder is renamed into place.
DIE_IN_SAVE = (
    "import os, signal, sys\n"
    "import appliance.training.checkpoint as c\n"
    "c._commit = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
    "from appliance.training.worker import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Any:
    torch.set_num_threads(1)
    return make_workspace(tmp_path_factory.mktemp("resume"), tiny_llama)


def reference(vault: Any, config: Any) -> dict[str, torch.Tensor]:
    """The adapter of an uninterrupted run of ``config``, trained in this process."""
    run_id = new_run(vault, config, adapter="reference")
    assert trainer_for(vault, run_id, CaptureLog(None)).run() == "finished"
    return folder_adapter(vault, run_id)


def test_stop_then_resume_equals_an_uninterrupted_run(setup: Any) -> None:
    _ws, vault = setup
    config = tiny_config("max_steps=8", "save_every=0")
    expected = reference(vault, config)

    run_id = new_run(vault, config)
    trainer: Any = None

    def stop_at_3(event: ev.Event) -> None:
        if isinstance(event, ev.Step) and event.step == 3:
            trainer.request_stop()

    first = CaptureLog(None, stop_at_3)
    trainer = trainer_for(vault, run_id, first)
    assert trainer.run() == "stopped"
    stopped = first.captured[-1]
    assert isinstance(stopped, ev.Stopped)
    assert (stopped.step, stopped.checkpoint) == (3, "step-00000003")

    second = CaptureLog(None)
    resumed = trainer_for(vault, run_id, second)
    assert resumed.run() == "finished"
    started = second.captured[0]
    assert isinstance(started, ev.Started)
    assert started.start_step == 3
    assert [e.step for e in second.captured if isinstance(e, ev.Step)] == [4, 5, 6, 7, 8]
    assert max_diff(folder_adapter(vault, run_id), expected) <= 1e-6


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ws, vault = setup
    config = tiny_config("max_steps=16", "save_every=3", "eval_every=4")
    expected = reference(vault, config)
    run_id = new_run(vault, config, adapter="survivor")
    folder = run_folder(vault, run_id)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    start = 0
    for moment in ("step", "checkpoint save", "step"):
        if moment == "checkpoint save":
            monkeypatch.setattr(
                runs,
                "worker_command",
                lambda f, threads=None: [
                    sys.executable,
                    "-c",
                    DIE_IN_SAVE,
                    str(f),
                    "--threads",
                    "1",
                ],
            )
        kill_at = rng.randint(start + 1, start + 5)
        with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
            process = runs.launch(vault, reg, run_id, threads=1)
            for event in process.events():
                if isinstance(event, ev.Started):
                    start = event.start_step
                if moment == "step" and isinstance(event, ev.Step) and event.step >= kill_at:
                    process.kill()
                    break
            outcome = runs.wait_settled(process, vault, reg)
            assert outcome.state == "failed", (seed, moment, outcome)
            assert "killed by SIGKILL" in (outcome.message or "")
            assert reg.runs.get(run_id)["state"] == "failed"
        if moment == "checkpoint save":
            partial = [p.name for p in (folder / CHECKPOINTS_DIR).iterdir()]
            assert any(name.startswith(".tmp-") for name in partial), partial
            monkeypatch.undo()

    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        process = runs.launch(vault, reg, run_id, threads=1)
        seen = list(process.events())
        outcome = runs.wait_settled(process, vault, reg)
    assert outcome.state == "finished", (seed, outcome)
    started = seen[0]
    assert isinstance(started, ev.Started)
    assert started.start_step > 0  # it resumed rather than starting over
    assert not any(p.name.startswith(".tmp-") for p in (folder / CHECKPOINTS_DIR).iterdir())
    assert outcome.adapter == "survivor@1"
    difference = max_diff(registered_adapter(vault, "survivor@1"), expected)
    assert difference <= 1e-6, (seed, difference)
