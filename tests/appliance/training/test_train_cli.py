"""``appliance train`` and ``appliance run list|show|stop|resume`` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from appliance import preferences, workspace
from appliance.training import events as ev
from appliance.vault import Vault
from tests.helpers.cli import CliRunner
from tests.helpers.training import PASS, chat_rows, max_diff, registered_adapter, write_jsonl

ENV = {"APPLIANCE_PASSPHRASE": PASS}
# Slow enough steps (4 micro-batches each) that a stop lands mid-run.
SETTINGS = [
    "--preset", "quick-test",
    "--set", "max_steps=80",
    "--set", "micro_batch_size=2",
    "--set", "gradient_accumulation_steps=4",
    "--set", "save_every=10",
    "--set", "eval_every=30",
    "--set", "lr=1e-2",
    "--set", "seed=11",
]  # fmt: skip


@pytest.fixture
def prepared(cli: CliRunner, tmp_path: Path, tiny_llama: Path) -> CliRunner:
    torch.set_num_threads(1)
    assert cli("init", "--kdf-time", "0.01", env=ENV).returncode == 0
    assert cli("model", "import", str(tiny_llama), "--name", "tiny", env=ENV).returncode == 0
    data = write_jsonl(tmp_path / "facts.jsonl", chat_rows(24))
    assert cli("dataset", "import", str(data), "--name", "facts", env=ENV).returncode == 0
    return cli


def _train_argv(home: Path, adapter: str) -> list[str]:
    return [
        sys.executable, "-m", "appliance", "--home", str(home), "train",
        "--model", "tiny", "--dataset", "facts", "--adapter", adapter, *SETTINGS,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return {**env, **ENV}


def _run_id(text: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith("Run run-"))
    return line.split()[1]


def _wait_for_step(metrics: Path, beyond: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists():
            steps = [e.step for e in ev.replay(metrics) if isinstance(e, ev.Step)]
            if steps and steps[-1] > beyond:
                return
        time.sleep(0.1)
    raise AssertionError(f"no step beyond {beyond} in {metrics}")


@pytest.mark.slow
def test_train_stop_resume_from_the_cli_equals_an_uninterrupted_run(prepared: CliRunner) -> None:
    cli, home = prepared, prepared.home

    # 1. An uninterrupted run in the foreground: estimate, progress, adapter.
    done = cli(*_train_argv(home, "straight")[5:], env=ENV)
    assert done.returncode == 0, done.stderr
    assert "No NVIDIA GPU found" in done.stdout
    assert "Estimated peak RAM memory" in done.stdout
    assert "eval loss" in done.stdout
    assert "step 80/80  loss" in done.stdout
    assert "Finished run" in done.stdout
    assert "adapter straight@1" in done.stdout

    # 2. The same run, interrupted with Ctrl-C: the child checkpoints and stops.
    proc = subprocess.Popen(
        _train_argv(home, "interrupted"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGINT)
            break
    rest, stderr = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    assert proc.returncode == 0, stderr
    assert "Stopping after the current step" in text
    run_id = _run_id(text)
    assert f"continue it with 'appliance run resume {run_id}'" in text
    listed = {r["id"]: r for r in json.loads(cli("run", "list", "--json", env=ENV).stdout)}
    assert listed[run_id]["state"] == "stopped"

    # 3. Resumed in the background, then stopped with 'run stop'.
    detached = cli("run", "resume", run_id, "--detach", env=ENV)
    assert detached.returncode == 0, detached.stderr
    assert "Running in the background" in detached.stdout
    metrics = home / "runs" / run_id / ev.METRICS_FILE
    stopped_at = [e.step for e in ev.replay(metrics) if isinstance(e, ev.Stopped)][-1]
    _wait_for_step(metrics, stopped_at + 2)
    stop = cli("run", "stop", run_id, env=ENV)
    assert stop.returncode == 0, stop.stderr
    assert f"Run {run_id} stopped at step" in stop.stdout

    # 4. Resumed in the foreground to the end.
    final = cli("run", "resume", run_id, env=ENV)
    assert final.returncode == 0, final.stderr
    assert "resuming at step" in final.stdout
    assert "adapter interrupted@1" in final.stdout

    runs = {r["id"]: r for r in json.loads(cli("run", "list", "--json", env=ENV).stdout)}
    assert runs[run_id]["state"] == "finished"
    assert runs[run_id]["adapters"] == ["interrupted@1"]
    shown = json.loads(cli("run", "show", run_id, "--json", env=ENV).stdout)
    assert shown["id"] == run_id
    kinds = [e["type"] for e in shown["events"]]
    assert kinds.count("started") == 3
    assert kinds.count("stopped") == 2
    assert kinds[-1] in ("finished", "memory")
    text = cli("run", "show", run_id, env=ENV).stdout
    assert "stopped at step" in text
    assert "finished at step 80" in text

    ws = workspace.open_workspace(home)
    vault = Vault.unlock(ws, PASS)
    difference = max_diff(
        registered_adapter(vault, "straight@1"), registered_adapter(vault, "interrupted@1")
    )
    assert difference <= 1e-6


def test_cli_errors_are_one_clear_line(prepared: CliRunner) -> None:
    cli = prepared
    base = ["train", "--model", "tiny", "--adapter", "a"]
    missing = cli(*base, "--dataset", "nope", env=ENV)
    assert missing.returncode == 1
    assert missing.err_lines == [missing.err_lines[0]]
    assert missing.err_lines[0].startswith("error: no dataset named 'nope'")
    # Everything is checked before the estimate is printed or anything is made.
    bad_name = cli("train", "--model", "tiny", "--dataset", "facts", "--adapter", "a b", env=ENV)
    assert bad_name.returncode == 2
    assert bad_name.err_lines == [bad_name.err_lines[0]]
    assert bad_name.err_lines[0].startswith("error: invalid adapter name 'a b'")
    assert bad_name.stdout == ""
    no_model = cli("train", "--model", "nope", "--dataset", "facts", "--adapter", "a", env=ENV)
    assert no_model.returncode == 1
    assert no_model.stdout == ""
    # The balanced preset's 1024 tokens do not fit the tiny model's 512-token context.
    long = cli(*base, "--dataset", "facts", env=ENV)
    assert long.returncode == 2
    assert long.err_lines == [
        "error: invalid training config: data.max_seq_length is 1024, longer than the "
        "512-token context of model tiny; set it to 512 or less"
    ]
    assert long.stdout == ""
    bad = cli(*base, "--dataset", "facts", "--set", "rank=0", env=ENV)
    assert bad.returncode == 2
    assert bad.err_lines[-1].startswith("error: invalid training config: lora.rank is 0")
    unknown = cli("run", "show", "run-nope", env=ENV)
    assert unknown.returncode == 1
    assert unknown.err_lines == [
        "error: no run with id 'run-nope'; 'appliance run list' shows the runs"
    ]
    assert cli("run", "list", "--json", env=ENV).stdout.strip() == "[]"
    empty = cli("run", "list", env=ENV)
    assert "No runs yet" in empty.stdout


def test_without_gpus_the_workspace_setting_chooses_and_a_missing_gpu_is_refused(
    cli: CliRunner,
) -> None:
    assert cli("init", "--kdf-time", "0.01", env=ENV).returncode == 0
    ws = workspace.open_workspace(cli.home)
    preferences.update(ws, training_gpus=(99,))  # no machine here has a GPU 99
    train = ["train", "--model", "tiny", "--dataset", "facts", "--adapter", "a"]
    for argv in (train, ["run", "resume", "run-x"]):
        refused = cli(*argv, env=ENV)
        assert refused.returncode == 2, refused.stderr
        assert len(refused.err_lines) == 1, refused.stderr
        assert "the workspace allows training on GPU 99" in refused.stderr
        assert str(preferences.settings_path(ws)) in refused.stderr
        assert "Traceback" not in refused.stderr
    # --gpus or --processes given: the setting does not apply (here: no model is the refusal).
    for extra in (["--gpus", "none"], ["--processes", "1"]):
        other = cli(*train, *extra, env=ENV)
        assert other.returncode != 0
        assert "the workspace allows" not in other.stderr, other.stderr
        assert "tiny" in other.stderr, other.stderr
    shown = cli("train", "--help").stdout.replace("│", " ")
    assert "Default: the GPUs the workspace allows" in " ".join(shown.split())
