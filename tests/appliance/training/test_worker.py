"""The training child's parts in this process: data, the loop, checkpoints, failure messages."""

from __future__ import annotations

import io
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance.errors import DatasetError, IntegrityError
from appliance.gpu import format_bytes
from appliance.training import checkpoint as ckpt
from appliance.training import events as ev
from appliance.training.config import DataSettings
from appliance.training.data import IGNORE, BatchPlan, Example, encode_chat, encode_text, tokenise
from appliance.training.runfolder import CHECKPOINTS_DIR
from appliance.training.worker import KeyHandoverError, choose_threads, failure_event, read_keys
from tests.helpers.training import (
    CaptureLog,
    chat_rows,
    folder_adapter,
    make_workspace,
    new_run,
    run_folder,
    run_key,
    tiny_config,
    trainer_for,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama), local_files_only=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Any:
    torch.set_num_threads(1)
    return make_workspace(tmp_path_factory.mktemp("train"), tiny_llama)


# --- data --------------------------------------------------------------------------------------


def test_only_assistant_tokens_carry_labels(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus one?"},
        {"role": "assistant", "content": "The answer is 3."},
        {"role": "user", "content": "And 5?"},
        {"role": "assistant", "content": "It is 6."},
    ]
    example = encode_chat(tokenizer, messages, "assistant")
    assert len(example.labels) == len(example.input_ids)
    learned = [
        i for i, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE
    ]
    text = tokenizer.decode(learned)
    assert text == "The answer is 3.<|im_end|>\nIt is 6.<|im_end|>\n"
    full = tokenizer.decode(example.input_ids)
    assert "What is 2 plus one?" in full
    assert "Be brief." in full
    everything = encode_chat(tokenizer, messages, "all")
    assert everything.input_ids == example.input_ids
    assert everything.labels == everything.input_ids


def test_text_rows_learn_every_token_and_end_with_eos(tokenizer: Any) -> None:
    example = encode_text(tokenizer, "Encrypted datasets never leave the workstation.")
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_over_length_rows_are_truncated_or_dropped_and_counted(tokenizer: Any) -> None:
    rows = [{**r, "split": "train"} for r in chat_rows(4)]
    rows.append({"text": "fox " * 200, "split": "train"})
    cut = tokenise(rows, tokenizer, DataSettings(max_seq_length=40, over_length="truncate"))
    assert (cut.truncated, cut.dropped, len(cut.train)) == (1, 0, 5)
    assert all(len(e.input_ids) <= 40 for e in cut.train)
    dropped = tokenise(rows, tokenizer, DataSettings(max_seq_length=40, over_length="drop"))
    assert (dropped.truncated, dropped.dropped, len(dropped.train)) == (0, 1, 4)
    with pytest.raises(DatasetError, match="no training example is left"):
        tokenise(rows[-1:], tokenizer, DataSettings(max_seq_length=16, over_length="drop"))


def test_batch_order_depends_on_seed_and_position_only() -> None:
    examples = [Example([i, i], [i, i]) for i in range(7)]
    plan, again = BatchPlan(examples, 3, seed=5), BatchPlan(examples, 3, seed=5)
    assert plan.per_epoch == 3
    first = [[e.input_ids[0] for e in plan.micro_batch(m)] for m in range(6)]
    # Asked out of order, a fresh plan gives the same batches (what a resume does).
    assert [[e.input_ids[0] for e in again.micro_batch(m)] for m in (5, 4, 3, 2, 1, 0)] == first[
        ::-1
    ]
    # One epoch visits every example once.
    assert sorted(i for batch in first[:3] for i in batch) == list(range(7))
    assert first[:3] != first[3:]  # and the next epoch is shuffled differently
    other = BatchPlan(examples, 3, seed=6)
    assert [[e.input_ids[0] for e in other.micro_batch(m)] for m in range(3)] != first[:3]


# --- the loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_training_lowers_the_loss_and_events_replay(setup: Any, method: str) -> None:
    _ws, vault = setup
    run_id = new_run(
        vault, tiny_config("max_steps=14", "eval_every=7", "save_every=0", method=method)
    )
    folder = run_folder(vault, run_id)
    log = CaptureLog(folder / ev.METRICS_FILE)
    trainer = trainer_for(vault, run_id, log)
    assert trainer.run() == "finished"
    log.close()
    events = log.captured
    steps = [e for e in events if isinstance(e, ev.Step)]
    evals = [e for e in events if isinstance(e, ev.Eval)]
    assert isinstance(events[0], ev.Started)
    assert isinstance(events[-1], ev.Finished)
    assert [s.step for s in steps] == list(range(1, 15))
    assert [e.step for e in evals] == [0, 7, 14]
    assert sum(s.loss for s in steps[-3:]) / 3 < steps[0].loss - 0.3
    assert evals[-1].eval_loss < evals[0].eval_loss
    started = events[0]
    assert isinstance(started, ev.Started)
    assert started.device == "cpu"
    assert started.total_steps == 14
    assert started.estimate
    assert 0 < started.trainable_params < started.total_params
    done = events[-1]
    assert isinstance(done, ev.Finished)
    assert done.tokens_seen == steps[-1].tokens_seen
    assert done.peak_memory
    assert done.eval_loss == evals[-1].eval_loss
    # The stream and metrics.jsonl hold the same events, in the same order.
    streamed = [ev.parse_event(line) for line in log.buffer.getvalue().splitlines()]
    replayed = list(ev.replay(folder / ev.METRICS_FILE))
    assert [e.to_dict() for e in streamed] == [e.to_dict() for e in events]
    assert [e.to_dict() for e in replayed] == [e.to_dict() for e in events]
    assert folder_adapter(vault, run_id)  # the sealed adapter is in the folder


def test_lora_weights_keep_changing_after_evaluations(setup: Any) -> None:
    """The bitsandbytes CPU trap (docs/engineering-notes.md): an eval pass must not freeze 4-bit
    LoRA training."""
    from appliance.training.quant import repacked_modules
    from tests.helpers.qlora import merge_dequantized

    _ws, vault = setup
    run_id = new_run(vault, tiny_config("max_steps=5", "eval_every=1", "save_every=0", "dropout=0"))
    seen: list[tuple[str, dict[str, torch.Tensor]]] = []
    trainer: Any = None

    def watch(event: ev.Event) -> None:
        if isinstance(event, ev.Step | ev.Eval):
            state = {
                n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n
            }
            seen.append((event.type, state))

    log = CaptureLog(None, watch)
    trainer = trainer_for(vault, run_id, log)
    assert trainer.run() == "finished"
    kinds = [k for k, _ in seen]
    assert kinds[:3] == ["eval", "step", "eval"]  # evaluations run between the steps
    step_states = [s for k, s in seen if k == "step"]
    for before, after in itertools.pairwise(step_states):
        moved = [n for n in before if not torch.equal(before[n], after[n])]
        assert len(moved) == len(before), "some LoRA weights stopped changing after an eval"
    assert repacked_modules(trainer.model) == []
    # A merge after evaluation matches the unmerged model.
    model = trainer.model.eval()
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        merged = merge_dequantized(model)(input_ids=ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-4)


# --- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_damage_is_skipped(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _ws, vault = setup
    run_id = new_run(vault, tiny_config("max_steps=6", "save_every=2", "keep_last=2"))
    log = CaptureLog(None)
    trainer = trainer_for(vault, run_id, log)
    assert trainer.run() == "finished"
    root = run_folder(vault, run_id) / CHECKPOINTS_DIR
    assert [p.name for p in ckpt.checkpoints(root)] == ["step-00000002", "step-00000004"]
    assert [e.step for e in log.captured if isinstance(e, ev.Checkpoint)] == [2, 4]
    key = run_key(vault, run_id)
    raw = (root / "step-00000004" / ckpt.STATE_FILE).read_bytes()
    assert b"lora_A" not in raw
    assert b"exp_avg" not in raw

    snap = ckpt.verify_and_read(root / "step-00000004", key)
    again = ckpt.unpack(ckpt.pack(snap))
    assert again.state == snap.state
    assert all(torch.equal(again.lora[k], v) for k, v in snap.lora.items())
    assert torch.equal(again.rng["torch"], snap.rng["torch"])
    assert again.rng["python"] == snap.rng["python"]
    assert again.optimizer["param_groups"] == snap.optimizer["param_groups"]
    for index, values in snap.optimizer["state"].items():
        assert all(torch.equal(again.optimizer["state"][index][n], t) for n, t in values.items())

    (root / ".tmp-step-00000006-dead").mkdir()  # what a kill during a save leaves
    assert ckpt.clean_partial(root) == 1
    state = root / "step-00000004" / ckpt.STATE_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="appliance.training"):
        found = ckpt.latest(root, key)
    assert found is not None
    assert found[0] == "step-00000002"
    assert "step-00000004 is damaged" in caplog.text
    (root / "step-00000002" / ckpt.MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="appliance.training"):
        assert ckpt.latest(root, key) is None
    assert "starts from the beginning" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="manifest"):
        ckpt.verify_and_read(root / "step-00000002", key)


# --- the worker's edges ------------------------------------------------------------------------


def test_keys_on_stdin_are_checked() -> None:
    good = json.dumps({"dataset_key": "ab" * 32, "run_key": "cd" * 32})
    keys = read_keys(io.StringIO(good + "\n"))
    assert keys["dataset_key"] == bytes.fromhex("ab" * 32)
    with pytest.raises(KeyHandoverError, match="no keys arrived"):
        read_keys(io.StringIO(""))
    with pytest.raises(KeyHandoverError, match="not a JSON line"):
        read_keys(io.StringIO("dataset_key=ab\n"))
    with pytest.raises(KeyHandoverError, match="32-byte"):
        read_keys(io.StringIO(json.dumps({"dataset_key": "ab", "run_key": "cd" * 32})))


def test_failure_messages_speak_to_the_user(tmp_path: Path) -> None:
    class FakeTrainer:
        def __init__(self) -> None:
            self.state = ckpt.TrainerState(step=11)
            self.estimate = {"total_bytes": 9_000_000_000}
            self.free_at_start = 8_000_000_000
            self.model_config: dict[str, Any] = {}
            self.config = tiny_config()

    oom = failure_event(
        torch.cuda.OutOfMemoryError("CUDA out of memory."), "r", FakeTrainer(), tmp_path
    )
    assert oom.kind == "oom"
    assert oom.step == 11
    assert "CUDA out of memory at step 12" in oom.message
    assert f"the estimate was {format_bytes(9_000_000_000)}" in oom.message
    assert f"{format_bytes(8_000_000_000)} was free at the start" in oom.message
    assert "micro_batch_size" in oom.message
    data = failure_event(IntegrityError("dataset x is damaged"), "r", None, tmp_path)
    assert data.kind == "data"
    assert data.step is None
    crash = failure_event(ZeroDivisionError("division by zero"), "r", FakeTrainer(), tmp_path)
    assert crash.kind == "error"
    assert "internal error at step 12: ZeroDivisionError" in crash.message
    assert "train.log" in crash.message


def test_cpu_threads_leave_a_core_free() -> None:
    import os

    assert choose_threads(3) == 3  # --threads wins
    cores = len(os.sched_getaffinity(0))
    assert 1 <= choose_threads(None) <= max(1, cores - 1)
