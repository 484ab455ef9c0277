"""The parent side: start the child, hand over keys, settle outcomes in the registry."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance import datasets
from appliance.errors import NotFoundError, UsageError
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training import runs
from appliance.training.config import ConfigError
from appliance.training.process import process_alive
from appliance.training.progress import RunProgress
from appliance.training.runfolder import ADAPTER_FILE, LOG_FILE
from tests.helpers.training import make_workspace, new_run, run_folder, tiny_config

# The real worker, whose loop raises a bug-like error in the middle of step 3.
CRASH_AT_STEP_3 = (
    "import sys\n"
    "import appliance.training.loop as loop\n"
    "real = loop.Trainer._train_step\n"
    "def step(self, index):\n"
    "    if index == 2:\n"
    "        raise RuntimeError('simulated crash')\n"
    "    return real(self, index)\n"
    "loop.Trainer._train_step = step\n"
    "from appliance.training.worker import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
# A child that dies at once with exit code 3, before any event (after reading its keys).
DIE_AT_ONCE = "import os, sys; sys.stdin.readline(); os._exit(3)  # appliance.training.worker"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Any:
    torch.set_num_threads(1)
    return make_workspace(tmp_path_factory.mktemp("launch"), tiny_llama)


def _registry(vault: Any) -> Registry:
    return Registry.open(vault.ws, audit_key=vault.audit_key)


def _launch_and_settle(vault: Any, run_id: str) -> tuple[list[ev.Event], runs.Outcome]:
    with _registry(vault) as reg:
        process = runs.launch(vault, reg, run_id, threads=1)
        seen = list(process.events())
        return seen, runs.wait_settled(process, vault, reg)


def _command(code: str) -> Any:
    return lambda folder, threads=None: [sys.executable, "-c", code, str(folder)]


def test_detached_run_finishes_and_is_registered_by_reconcile(setup: Any) -> None:
    _ws, vault = setup
    config = tiny_config("max_steps=6", "save_every=2", "eval_every=3")
    run_id = new_run(vault, config, adapter="facts-qa")
    folder = run_folder(vault, run_id)
    with _registry(vault) as reg:
        assert reg.runs.get(run_id)["state"] == "queued"
        process = runs.launch(vault, reg, run_id, detach=True, threads=1)
        run = reg.runs.get(run_id)
        assert (run["state"], run["pid"]) == ("running", process.pid)
        assert process_alive(process.pid, run_id)
        assert list(process.events()) == []  # detached: events go only to metrics.jsonl
        assert process.wait(timeout=120) == 0
        # No parent settled it; the next command that holds the vault does.
        assert reg.runs.get(run_id)["state"] == "running"
        (settled,) = runs.reconcile(vault, reg)
        assert (settled.state, settled.adapter) == ("finished", "facts-qa@1")
        run = reg.runs.get(run_id)
        assert (run["state"], run["pid"]) == ("finished", None)
        lineage = reg.adapters.lineage("facts-qa@1")
        assert runs.reconcile(vault, reg) == []
    assert lineage["run"] is not None
    assert lineage["base_model"] is not None
    assert lineage["dataset"] is not None
    assert lineage["config"] is not None
    assert lineage["run"]["id"] == run_id
    assert lineage["base_model"]["name"] == "tiny"
    assert (lineage["dataset"]["name"], lineage["dataset"]["version"]) == ("facts", 1)
    assert lineage["seed"] == 7
    assert lineage["config"]["schedule"]["max_steps"] == 6
    metrics = lineage["metrics"]
    assert set(metrics) >= {"train_loss", "eval_loss", "tokens_seen", "wall_s", "peak_memory"}
    assert metrics["tokens_seen"] > 0
    assert metrics["peak_memory"] > 0
    assert set(lineage["lib_versions"]) >= {"torch", "transformers", "peft"}
    assert not (folder / ADAPTER_FILE).exists()  # registered copy only
    events = list(ev.replay(folder / ev.METRICS_FILE))
    kinds = [e.type for e in events if not isinstance(e, ev.Memory)]
    assert kinds[0] == "started"
    assert kinds[-1] == "finished"
    assert [e.step for e in events if isinstance(e, ev.Step)] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events if isinstance(e, ev.Checkpoint)] == [2, 4]
    assert any(isinstance(e, ev.Memory) and e.rss for e in events)
    assert (folder / LOG_FILE).exists()
    # Owner-only, like every file of the workspace (the event stream and the log included).
    for name in (ev.METRICS_FILE, LOG_FILE, "meta.json", "run-key.enc"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    # One description of the run: the registry's record and the launch section, nothing else.
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoints", "meta.json", "metrics.jsonl", "run-key.enc", "train.log"
    ]  # fmt: skip
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta) == {"kind", "format", "record", "launch"}
    assert (meta["record"]["state"], meta["record"]["pid"]) == ("finished", None)
    assert meta["launch"]["adapter_name"] == "facts-qa"
    # The real run's metrics.jsonl replays into the view-model the CLI and the GUI render.
    progress = RunProgress.replay(folder / ev.METRICS_FILE)
    assert progress.state == "finished"
    assert [p.step for p in progress.steps] == [1, 2, 3, 4, 5, 6]
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert [p.loss for p in progress.steps] == [s.loss for s in steps]
    assert [p.step for p in progress.evals] == [e.step for e in events if isinstance(e, ev.Eval)]
    assert progress.host
    assert progress.gpus == {}
    assert progress.final is not None
    assert progress.final.tokens_seen == metrics["tokens_seen"]
    # Nothing of the dataset or the weights reaches the run folder in plaintext.
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"plus one" not in data, path
            assert b"The answer is" not in data, path
            assert b"lora_A" not in data, path


def test_the_child_gets_one_data_key_and_the_run_key_never_the_master_key(setup: Any) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config())
    with _registry(vault) as reg:
        line = runs.key_line(vault, reg, run_id)
        version = datasets.resolve(reg, "facts")
    keys = json.loads(line)
    assert sorted(keys) == ["dataset_key", "run_key"]
    assert vault.master_key.hex().encode() not in line
    path = vault.ws.home / version["path"]
    assert bytes.fromhex(keys["dataset_key"]) == vault.data_key(path, version["object_id"])
    sealed = run_folder(vault, run_id) / "run-key.enc"
    assert bytes.fromhex(keys["run_key"]) == bytes(vault.read(sealed))
    assert bytes.fromhex(keys["run_key"]) not in sealed.read_bytes()


def test_a_wrong_data_key_fails_clearly(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config())
    real = runs.key_line

    def wrong(vault: Any, reg: Any, run: str) -> bytes:
        keys = json.loads(real(vault, reg, run))
        keys["dataset_key"] = os.urandom(32).hex()
        return (json.dumps(keys) + "\n").encode()

    monkeypatch.setattr(runs, "key_line", wrong)
    seen, outcome = _launch_and_settle(vault, run_id)
    (failed,) = seen
    assert isinstance(failed, ev.Failed)
    assert failed.kind == "data"
    assert "dataset facts version 1 cannot be decrypted with the key" in failed.message
    assert outcome.state == "failed"
    with _registry(vault) as reg:
        run = reg.runs.get(run_id)
    assert run["state"] == "failed"
    assert "cannot be decrypted" in (run["failure_reason"] or "")


def test_missing_dataset_and_invalid_config_are_refused(setup: Any) -> None:
    _ws, vault = setup
    with _registry(vault) as reg, pytest.raises(NotFoundError, match="no dataset named 'nope'"):
        runs.create_run(
            vault, reg, model="tiny", dataset="nope", adapter_name="x", config=tiny_config()
        )
    with pytest.raises(ConfigError, match=r"lora\.rank is 0"):
        tiny_config("rank=0")

    run_id = new_run(vault, tiny_config())
    with _registry(vault) as reg:
        version = datasets.resolve(reg, "facts")
        (vault.ws.home / version["path"]).rename(vault.ws.home / "moved.enc")
        try:
            with pytest.raises(NotFoundError, match="missing from the workspace"):
                runs.launch(vault, reg, run_id)
        finally:
            (vault.ws.home / "moved.enc").rename(vault.ws.home / version["path"])
        run = reg.runs.get(run_id)
    assert run["state"] == "failed"
    assert "missing from the workspace" in (run["failure_reason"] or "")

    # A config that no longer validates (edited in the registry, which rewrites meta.json at
    # every change): the child reads it from meta.json and reports it.
    with _registry(vault) as reg:
        config = reg.runs.get(run_id)["config"]
        config["schedule"]["micro_batch_size"] = 0
        reg.runs.update(run_id, config=config)
    meta = json.loads((run_folder(vault, run_id) / "meta.json").read_text())
    assert meta["record"]["config"]["schedule"]["micro_batch_size"] == 0
    (failed,), outcome = _launch_and_settle(vault, run_id)
    assert isinstance(failed, ev.Failed)
    assert failed.kind == "config"
    assert "meta.json" in failed.message
    assert "micro_batch_size is 0" in failed.message
    assert outcome.state == "failed"


def test_a_crash_mid_run_is_reported(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config("save_every=2"))
    monkeypatch.setattr(runs, "worker_command", _command(CRASH_AT_STEP_3))
    seen, outcome = _launch_and_settle(vault, run_id)
    assert [e.step for e in seen if isinstance(e, ev.Step)] == [1, 2]
    failed = seen[-1]
    assert isinstance(failed, ev.Failed)
    assert failed.step == 2
    assert "internal error at step 3: RuntimeError: simulated crash" in failed.message
    assert outcome.state == "failed"
    log_text = (run_folder(vault, run_id) / LOG_FILE).read_text()
    assert "Traceback" in log_text  # the details are in the log, not in the message

    monkeypatch.setattr(runs, "worker_command", _command(DIE_AT_ONCE))
    seen, outcome = _launch_and_settle(vault, run_id)
    assert seen == []
    assert outcome.state == "failed"
    assert outcome.message == "the training process exited with code 3 without a report"
    # The child could not say it; the parent leaves the one line in the run's log.
    last = (run_folder(vault, run_id) / LOG_FILE).read_text().splitlines()[-1]
    assert last.endswith(f"run {run_id} failed: {outcome.message}")
    with _registry(vault) as reg:
        assert reg.runs.get(run_id)["failure_reason"] == outcome.message


def test_runs_whose_process_is_gone_become_failed_process_lost(setup: Any) -> None:
    _ws, vault = setup
    gone = subprocess.Popen(["true"])
    gone.wait()
    with _registry(vault) as reg:
        lost = reg.runs.add(
            base_model="tiny", config={}, dataset="facts", state="running", pid=gone.pid
        )
        # A live process that is not this run's worker (a reused PID) does not count either.
        reused = reg.runs.add(
            base_model="tiny", config={}, dataset="facts", state="running", pid=os.getpid()
        )
        settled = {o.run_id: o for o in runs.reconcile(vault, reg)}
        assert settled[lost].state == settled[reused].state == "failed"
        for run_id in (lost, reused):
            run = reg.runs.get(run_id)
            assert (run["state"], run["failure_reason"]) == ("failed", "process lost")
        with pytest.raises(UsageError, match="is failed, not running"):
            runs.stop_run(vault, reg, lost)


# A child that ignores SIGTERM (a hung step): 'run stop' must kill it after the timeout.
IGNORES_SIGTERM = (
    "import signal, sys, time  # appliance.training.worker\n"
    "sys.stdin.readline()\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', file=sys.stderr, flush=True)\n"
    "time.sleep(120)\n"
)


def _wait_for_log_line(log: Path, line: str, timeout: float = 60) -> None:
    """Wait until the child has written ``line`` to its log (its stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and line in log.read_text().splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"{log} never got the line {line!r}")


def test_stop_kills_a_child_that_does_not_stop_in_time(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config())
    monkeypatch.setattr(runs, "worker_command", _command(IGNORES_SIGTERM))
    with _registry(vault) as reg:
        process = runs.launch(vault, reg, run_id, detach=True)
        _wait_for_log_line(run_folder(vault, run_id) / LOG_FILE, "ignoring SIGTERM")
        outcome = runs.stop_run(vault, reg, run_id, timeout=1)
        assert process.wait(timeout=10) == -9
        run = reg.runs.get(run_id)
    assert outcome.state == "failed"
    assert "did not stop within 1 s and was killed" in (outcome.message or "")
    assert run["state"] == "failed"
    assert run["failure_reason"] == outcome.message


# The real worker, reporting at exit which registry or SQLite modules it loaded (on stderr,
# which is the run's train.log).
REPORTS_ITS_MODULES = (
    "import atexit, sys  # appliance.training.worker\n"
    "def report():\n"
    "    names = [m for m in sys.modules if m.startswith(('appliance.registry', 'sqlite'))]\n"
    "    print('loaded by the child:', sorted(names), file=sys.stderr)\n"
    "atexit.register(report)\n"
    "from appliance.training.worker import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_the_child_never_loads_the_registry(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config("max_steps=3", "warmup_steps=0", "save_every=0"))
    monkeypatch.setattr(runs, "worker_command", _command(REPORTS_ITS_MODULES))
    seen, outcome = _launch_and_settle(vault, run_id)
    assert outcome.state == "finished", outcome
    assert any(isinstance(e, ev.Finished) for e in seen)  # it trained and packed its adapter
    log_text = (run_folder(vault, run_id) / LOG_FILE).read_text()
    assert "loaded by the child: []" in log_text


def test_a_parent_that_stops_reading_does_not_stop_the_run(setup: Any) -> None:
    """A killed ``appliance train`` (its pipe closes): the child trains on, no traceback."""
    _ws, vault = setup
    config = tiny_config("max_steps=6", "save_every=0", "eval_every=0")
    run_id = new_run(vault, config, adapter="orphaned")
    with _registry(vault) as reg:
        process = runs.launch(vault, reg, run_id, threads=1)
        first = next(process.events())
        assert isinstance(first, ev.Started)
        assert process.proc.stdout is not None
        process.proc.stdout.close()  # what the parent's death does to the pipe
        assert process.wait(timeout=120) == 0
        (outcome,) = runs.reconcile(vault, reg)
    assert (outcome.state, outcome.adapter) == ("finished", "orphaned@1")
    log_text = (run_folder(vault, run_id) / LOG_FILE).read_text()
    assert "Traceback" not in log_text
    assert "the parent stopped reading the events; they go on to" in log_text
