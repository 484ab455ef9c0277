"""Data-parallel training through torchrun on the CPU (gloo), with the tiny model.

The reference is one process with the whole global micro-batch: two processes with half of it
each must end with the same LoRA weights and the same loss curve, accumulation included; a rank
killed mid-run fails the run naming it, and the run resumes on one process to the same adapter;
two "machines" on this one (two torchrun agents meeting at a loopback rendezvous) match too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training import runs
from appliance.training.placement import Placement
from appliance.training.runfolder import CHECKPOINTS_DIR, LOG_FILE
from tests.helpers.cli import CliRunner
from tests.helpers.training import (
    PASS,
    CaptureLog,
    chat_rows,
    folder_adapter,
    make_workspace,
    max_diff,
    new_run,
    registered_adapter,
    run_folder,
    tiny_config,
    trainer_for,
    write_jsonl,
)

# fp32 on the CPU, no dropout (its masks depend on how a batch is cut), a global micro-batch of
# 4 examples, two micro-batches accumulated per step.
SETTINGS = ("max_steps=6", "gradient_accumulation_steps=2", "dropout=0", "save_every=2")
TWO = Placement(processes=2)

# The real worker, with a note of every checkpoint, adapter and event write and the rank that
# made it (written to NOTES, outside the workspace); torchrun's ranks run this same command.
RECORD_WRITES = """
import os, sys
NOTES = {notes!r}
def note(what):
    with open(NOTES, "a") as handle:
        handle.write(os.environ.get("RANK", "agent") + " " + what + "\\n")
import appliance.training.checkpoint as checkpoint
import appliance.training.events as events
import appliance.training.loop as loop
save, write, emit = checkpoint.save, loop.write_object, events.EventLog.emit
def noted_save(*args, **kwargs):
    note("checkpoint")
    return save(*args, **kwargs)
def noted_write(*args, **kwargs):
    note("adapter")
    return write(*args, **kwargs)
def noted_emit(self, event):
    if self.path is not None or self.stream is not None:
        note("event " + event.type)
    return emit(self, event)
checkpoint.save, loop.write_object, events.EventLog.emit = noted_save, noted_write, noted_emit
from appliance.training.worker import main  # appliance.training.worker
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Any:
    torch.set_num_threads(1)
    return make_workspace(tmp_path_factory.mktemp("ddp"), tiny_llama)


def _registry(vault: Any) -> Registry:
    return Registry.open(vault.ws, audit_key=vault.audit_key)


def _run(
    vault: Any, run_id: str, placement: Placement, kill_rank_at: int | None = None
) -> tuple[list[ev.Event], runs.Outcome, float]:
    """Start one launch and follow it; optionally SIGKILL rank 1 after step ``kill_rank_at``.

    Returns the events, the settled outcome and the seconds from the kill to the settlement.
    """
    seen: list[ev.Event] = []
    killed_at = 0.0
    with _registry(vault) as reg:
        process = runs.launch(vault, reg, run_id, threads=1, placement=placement)
        for event in process.events():
            seen.append(event)
            if kill_rank_at and isinstance(event, ev.Step) and event.step == kill_rank_at:
                os.kill(_rank_pid(process.pid, 1), signal.SIGKILL)
                killed_at = time.monotonic()
        outcome = runs.wait_settled(process, vault, reg)
    return seen, outcome, time.monotonic() - killed_at if killed_at else 0.0


def _rank_pid(agent: int, rank: int) -> int:
    """The PID of torchrun's rank ``rank`` among the agent's children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == agent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} under agent {agent}")


def _steps(events: list[ev.Event]) -> list[tuple[int, float]]:
    return [(e.step, e.loss) for e in events if isinstance(e, ev.Step)]


def _same_losses(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    assert [s for s, _ in a] == [s for s, _ in b]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) <= 1e-5, (a, b)


@pytest.fixture(scope="module")
def two_processes(
    setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[ev.Event], Path]:
    """An uninterrupted 2-process run (micro-batch 2 each), every write noted by rank."""
    _ws, vault = setup
    notes = tmp_path_factory.mktemp("notes") / "writes.txt"
    code = RECORD_WRITES.format(notes=str(notes))
    run_id = new_run(vault, tiny_config(*SETTINGS, "micro_batch_size=2"), adapter="two")
    original = runs.worker_command
    runs.worker_command = lambda folder, threads=None: [
        sys.executable, "-c", code, str(folder), "--threads", "1"
    ]  # fmt: skip
    try:
        events, outcome, _ = _run(vault, run_id, TWO)
    finally:
        runs.worker_command = original
    assert outcome.state == "finished", outcome.message
    return run_id, events, notes


@pytest.fixture(scope="module")
def one_process(setup: Any) -> tuple[dict[str, torch.Tensor], list[ev.Event]]:
    """The same global batch in one process (micro-batch 4, the same accumulation), trained in
    this process: its adapter and events."""
    _ws, vault = setup
    reference = new_run(vault, tiny_config(*SETTINGS, "micro_batch_size=4"), adapter="one")
    log = CaptureLog(None)
    assert trainer_for(vault, reference, log).run() == "finished"
    return folder_adapter(vault, reference), log.captured


def test_two_processes_equal_one_with_twice_the_micro_batch(
    setup: Any, two_processes: Any, one_process: Any
) -> None:
    _ws, vault = setup
    run_id, events, notes = two_processes
    adapter, reference_events = one_process
    assert max_diff(registered_adapter(vault, "two@1"), adapter) <= 1e-5
    _same_losses(_steps(events), _steps(reference_events))

    started = events[0]
    assert isinstance(started, ev.Started)
    assert (started.world_size, started.backend, started.devices) == (2, "gloo", ["cpu", "cpu"])
    assert started.global_batch == 8  # micro-batch 2 x accumulation 2 x 2 processes
    # One event stream: each step once, memory readings from both processes.
    kinds = [e.type for e in events if not isinstance(e, ev.Memory)]
    assert kinds.count("started") == 1
    assert kinds[-1] == "finished"
    assert [s for s, _ in _steps(events)] == [1, 2, 3, 4, 5, 6]
    memory = [e for e in events if isinstance(e, ev.Memory) and e.rank_rss]
    assert memory
    assert all(len(e.rank_rss or []) == 2 for e in memory)
    # Only rank 0 wrote events, checkpoints and the adapter; rank 1 trained (its log lines).
    writers = {line.split()[0] for line in notes.read_text().splitlines()}
    assert writers == {"0"}, notes.read_text()
    written = notes.read_text().splitlines()
    assert written.count("0 checkpoint") == 2
    assert written.count("0 adapter") == 1
    folder = run_folder(vault, run_id)
    assert "[rank 1]" in (folder / LOG_FILE).read_text()
    with _registry(vault) as reg:
        placement = reg.adapters.lineage("two@1")["metrics"]["placement"]
    assert placement == [
        {
            "start_step": 0,
            "world_size": 2,
            "nnodes": 1,
            "backend": "gloo",
            "parallel": "ddp",
            "devices": ["cpu", "cpu"],
            "global_batch": 8,
        }
    ]
    # No plaintext of the dataset anywhere in the workspace, nor torchrun's leftovers in /tmp.
    canary = b"The answer is 13."
    for path in vault.ws.home.rglob("*"):
        if path.is_file():
            assert canary not in path.read_bytes(), path
    assert not list(Path("/tmp").glob("appliance-ranks-*"))


def test_a_killed_rank_fails_the_run_and_one_process_resumes_it(
    setup: Any, two_processes: Any
) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config(*SETTINGS, "micro_batch_size=2"), adapter="survivor")
    events, outcome, seconds = _run(vault, run_id, TWO, kill_rank_at=3)
    assert outcome.state == "failed"
    assert "rank 1 of 2" in (outcome.message or "")
    assert "killed by SIGKILL" in (outcome.message or "")
    assert seconds < 30, seconds  # no hung collective: the agent stops the others at once
    failed = [e for e in events if isinstance(e, ev.Failed)]
    assert failed
    assert failed[-1].rank == 1
    checkpoints = sorted(p.name for p in (run_folder(vault, run_id) / CHECKPOINTS_DIR).iterdir())
    assert checkpoints == ["step-00000002"]

    # 2 -> 1: the same global micro-batch, now as two pieces of 2 in one process.
    resumed, outcome, _ = _run(vault, run_id, Placement(processes=1))
    assert outcome.state == "finished", outcome.message
    started = resumed[0]
    assert isinstance(started, ev.Started)
    assert (started.start_step, started.world_size) == (2, 1)
    assert (
        max_diff(registered_adapter(vault, "survivor@1"), registered_adapter(vault, "two@1"))
        <= 1e-5
    )
    _same_losses(_steps(resumed), [s for s in _steps(two_processes[1]) if s[0] > 2])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.enable_socket  # for the free port only; the training runs in child processes
def test_two_machines_on_one_match_two_processes(setup: Any, two_processes: Any) -> None:
    _ws, vault = setup
    config = tiny_config(*SETTINGS, "micro_batch_size=2")
    owner = new_run(vault, config, adapter="nodes")
    member = new_run(vault, config, adapter="nodes-member")
    endpoint = f"127.0.0.1:{_free_port()}"
    with _registry(vault) as reg:
        second = runs.launch(
            vault,
            reg,
            member,
            threads=1,
            placement=Placement(nnodes=2, node_rank=1, rendezvous=endpoint),
        )
        first = runs.launch(
            vault,
            reg,
            owner,
            threads=1,
            placement=Placement(nnodes=2, node_rank=0, rendezvous=endpoint),
        )
        seen = list(first.events())
        settled = runs.wait_settled(first, vault, reg)
        member_seen = list(second.events())
        member_settled = runs.wait_settled(second, vault, reg)
    assert settled.state == "finished", settled.message
    assert member_settled.state == "finished", member_settled.message
    assert member_settled.adapter is None  # node 0 registers the adapter
    started = seen[0]
    assert isinstance(started, ev.Started)
    assert (started.world_size, started.nnodes) == (2, 2)
    assert (
        max_diff(registered_adapter(vault, "nodes@1"), registered_adapter(vault, "two@1")) <= 1e-5
    )
    _same_losses(_steps(seen), _steps(two_processes[1]))
    _same_losses(_steps(member_seen), _steps(seen))  # node 1 shows the same progress


# --- refused before anything starts -------------------------------------------------------------

ENV = {"APPLIANCE_PASSPHRASE": PASS}


def test_bad_placements_are_refused_and_nothing_is_created(
    cli: CliRunner, tmp_path: Path, tiny_llama: Path
) -> None:
    assert cli("init", "--kdf-time", "0.01", env=ENV).returncode == 0
    assert cli("model", "import", str(tiny_llama), "--name", "tiny", env=ENV).returncode == 0
    data = write_jsonl(tmp_path / "facts.jsonl", chat_rows(24))
    assert cli("dataset", "import", str(data), "--name", "facts", env=ENV).returncode == 0
    shown = json.loads(cli("dataset", "show", "facts", "--json", env=ENV).stdout)
    rows = int(shown["train_rows"])
    # A split in which the last global micro-batch leaves a process without an example.
    uneven = next((p, b) for p in (2, 3, 5) for b in range(1, 9) if 0 < rows % (p * b) < p)
    # Sequences the tiny model's 512-token context takes, so only the placement is refused.
    base = ["train", "--model", "tiny", "--dataset", "facts", "--adapter", "a"]
    base += ["--set", "max_seq_length=256"]
    cases = [
        (["--gpus", "7"], 2, "--gpus 7"),
        (["--processes", "0"], 2, "--processes 0: run at least 1 process"),
        (["--processes", "2", "--set", "parallel=fsdp"], 2, "does not run on the CPU"),
        (
            ["--processes", str(uneven[0]), "--set", f"micro_batch_size={uneven[1]}"],
            2,
            f"do not divide across {uneven[0]} processes",
        ),
        (
            ["--nnodes", "2", "--node-rank", "0", "--rendezvous", "10.0.0.5:29500"],
            1,
            "not on the workspace's network allow-list (empty",
        ),
    ]
    for extra, code, words in cases:
        result = cli(*base, *extra, env=ENV)
        assert result.returncode == code, (extra, result.stderr)
        assert len(result.err_lines) == 1, (extra, result.stderr)
        assert words in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr
    listed = json.loads(cli("run", "list", "--json", env=ENV).stdout)
    assert listed == []
    runs_dir = cli.home / "runs"
    assert not runs_dir.exists() or not list(runs_dir.iterdir())


@pytest.mark.slow
def test_fsdp_path_matches_ddp_checkpoints_whole_and_resumes_under_one_process(
    setup: Any, two_processes: Any
) -> None:
    # FSDP is offered on GPUs only; its code path (sharded 4-bit base stored in the compute
    # dtype, gathered checkpoints) runs on gloo too, which is what this checks on the CPU.
    from appliance.training.placement import Topology

    _ws, vault = setup
    run_id = new_run(vault, tiny_config(*SETTINGS, "micro_batch_size=2"), adapter="sharded")
    fsdp = Topology(
        nproc_per_node=2,
        nnodes=1,
        node_rank=0,
        device="cpu",
        backend="gloo",
        device_names=("cpu", "cpu"),
        parallel="fsdp",
    )
    seen: list[ev.Event] = []
    with _registry(vault) as reg:
        process = runs.launch(vault, reg, run_id, threads=1, topology=fsdp)
        for event in process.events():
            seen.append(event)
            if isinstance(event, ev.Step) and event.step == 3:
                process.stop()  # SIGTERM to the agent: every rank stops at the same step
        stopped = runs.wait_settled(process, vault, reg)
    assert stopped.state == "stopped", stopped.message
    started = seen[0]
    assert isinstance(started, ev.Started)
    assert started.parallel == "fsdp"
    _same_losses(_steps(seen), [s for s in _steps(two_processes[1]) if s[0] <= 3])
    resumed, outcome, _ = _run(vault, run_id, Placement(processes=1))
    assert outcome.state == "finished", outcome.message
    assert resumed[0].start_step == 3  # type: ignore[attr-defined]
    difference = max_diff(
        registered_adapter(vault, "sharded@1"), registered_adapter(vault, "two@1")
    )
    assert difference <= 1e-5


@pytest.mark.slow
def test_one_process_stopped_then_resumed_on_two_equals_one(setup: Any, one_process: Any) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config(*SETTINGS, "micro_batch_size=4"), adapter="widened")
    trainer: Any = None

    def stop_at_2(event: ev.Event) -> None:
        if isinstance(event, ev.Step) and event.step == 2:
            trainer.request_stop()

    trainer = trainer_for(vault, run_id, CaptureLog(None, stop_at_2))
    assert trainer.run() == "stopped"
    # 1 -> 2: each process takes half of the run's global micro-batch of 4.
    resumed, outcome, _ = _run(vault, run_id, TWO)
    assert outcome.state == "finished", outcome.message
    started = resumed[0]
    assert isinstance(started, ev.Started)
    assert (started.start_step, started.world_size, started.global_batch) == (2, 2, 8)
    adapter, reference_events = one_process
    assert max_diff(registered_adapter(vault, "widened@1"), adapter) <= 1e-5
    _same_losses(_steps(resumed), [s for s in _steps(reference_events) if s[0] > 2])
