"""The event stream: round trips, strictness on malformed lines, tolerance of new fields, replay."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from appliance.training import events as ev
from appliance.training.events import EventError, parse_event

RUN = "run-0001"

SAMPLES: list[ev.Event] = [
    ev.Started(
        run_id=RUN,
        time=1700000000.25,
        model="smollm2@1",
        dataset="facts@2",
        device="cuda:0",
        trainable_params=4_884_480,
        total_params=139_400_000,
        total_steps=120,
        train_examples=900,
        dropped_examples=3,
        estimate={"total_bytes": 123, "items": [{"key": "weights", "bytes": 100}]},
        pid=4242,
    ),
    ev.Step(
        run_id=RUN,
        time=1700000001.0,
        step=1,
        total_steps=120,
        epoch=0.01,
        loss=2.75,
        lr=1e-5,
        tokens_per_s=1834.5,
        eta_s=612.0,
        grad_norm=0.8,
        tokens_seen=4096,
    ),
    ev.Eval(run_id=RUN, time=1700000002.0, step=50, eval_loss=1.9, eval_examples=100),
    ev.Memory(
        run_id=RUN,
        time=1700000003.0,
        step=51,
        gpus=[
            ev.GpuMemory(
                index=0,
                name="NVIDIA H200",
                used=9_000_000_000,
                total=150_000_000_000,
                allocated=7_000_000_000,
                reserved=8_000_000_000,
                peak=7_500_000_000,
            )
        ],
        rss=3_000_000_000,
    ),
    ev.Memory(run_id=RUN, time=1700000003.5, rss=1_000_000),
    ev.Checkpoint(run_id=RUN, time=1700000004.0, step=100, name="checkpoint-000100", bytes=99),
    ev.Stopped(run_id=RUN, time=1700000005.0, step=101, checkpoint="checkpoint-000101"),
    ev.Finished(
        run_id=RUN,
        time=1700000006.0,
        step=120,
        train_loss=1.2,
        eval_loss=1.5,
        tokens_seen=500_000,
        wall_s=630.5,
        peak_memory=7_500_000_000,
        adapter="legal@3",
    ),
    ev.Failed(
        run_id=RUN,
        time=1700000007.0,
        message="CUDA out of memory at step 3 (estimate 13.6 GB, free 12 GB)",
        step=3,
        kind="oom",
    ),
    ev.Spawned(run_id=RUN, time=1700000000.1, pid=4321),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_round_trip(event: ev.Event) -> None:
    line = event.to_json()
    assert "\n" not in line
    data = json.loads(line)
    assert list(data)[:3] == ["type", "run_id", "time"]
    assert data["type"] == event.type
    assert parse_event(line) == event
    assert parse_event(line.encode()) == event


def test_every_type_is_covered() -> None:
    assert (
        {e.type for e in SAMPLES}
        == set(ev.EVENT_TYPES)
        == {
            "started",
            "step",
            "eval",
            "memory",
            "checkpoint",
            "stopped",
            "finished",
            "failed",
            "spawned",
        }
    )


def test_time_defaults_to_now() -> None:
    import time

    before = time.time()
    event = ev.Eval(run_id=RUN, step=1, eval_loss=1.0)
    assert before <= event.time <= time.time()


def test_a_diverged_loss_stays_strict_json_and_reads_back_as_nan() -> None:
    step = ev.Step(
        run_id=RUN, step=3, total_steps=9, epoch=0.3, loss=math.nan, lr=1e-4, tokens_per_s=math.inf
    )
    line = step.to_json()
    assert "NaN" not in line
    assert "Infinity" not in line
    back = parse_event(line)
    assert isinstance(back, ev.Step)
    assert math.isnan(back.loss)
    assert math.isnan(back.tokens_per_s)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = json.loads(SAMPLES[1].to_json())
    data["new_metric"] = {"nested": [1, 2]}
    assert parse_event(json.dumps(data)) == SAMPLES[1]
    data = json.loads(SAMPLES[3].to_json())
    data["gpus"][0]["power_w"] = 350
    assert parse_event(json.dumps(data)) == SAMPLES[3]


def test_unknown_types_are_kept_not_refused() -> None:
    line = '{"type":"throttled","run_id":"r","time":5,"reason":"thermal"}'
    event = parse_event(line)
    assert isinstance(event, ev.UnknownEvent)
    assert event.type == "throttled"
    assert event.data == {"reason": "thermal"}
    assert event.time == 5.0
    assert json.loads(event.to_json()) == json.loads(line)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "not valid JSON"),
        ('{"type":"step",', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"step"', "expected a JSON object, got str"),
        ('{"run_id":"r","time":1}', "the 'type' field is missing or not a string"),
        ('{"type":7,"run_id":"r","time":1}', "the 'type' field is missing or not a string"),
        ('{"type":"eval","time":1,"step":1,"eval_loss":1}', "lacks the required field 'run_id'"),
        ('{"type":"eval","run_id":"r","step":1,"eval_loss":1}', "lacks the required field 'time'"),
        ('{"type":"eval","run_id":"r","time":1,"eval_loss":1}', "lacks the required field 'step'"),
        (
            '{"type":"eval","run_id":"r","time":1,"step":"1","eval_loss":1}',
            "'eval' event field 'step' must be a whole number, got \"1\"",
        ),
        (
            '{"type":"eval","run_id":"r","time":1,"step":1.5,"eval_loss":1}',
            "field 'step' must be a whole number, got 1.5",
        ),
        (
            '{"type":"eval","run_id":"r","time":1,"step":true,"eval_loss":1}',
            "field 'step' must be a whole number, got true",
        ),
        (
            '{"type":"eval","run_id":"r","time":"noon","step":1,"eval_loss":1}',
            "field 'time' must be a number",
        ),
        ('{"type":"eval","run_id":5,"time":1,"step":1,"eval_loss":1}', "'run_id' must be a string"),
        (
            '{"type":"memory","run_id":"r","time":1,"gpus":{"index":0}}',
            "field 'gpus' must be a list",
        ),
        (
            '{"type":"memory","run_id":"r","time":1,"gpus":[{"index":"0"}]}',
            "field 'gpus[0].index' must be a whole number",
        ),
        (
            '{"type":"memory","run_id":"r","time":1,"gpus":[{}]}',
            "lacks the required field 'gpus[0].index'",
        ),
        (
            '{"type":"started","run_id":"r","time":1,"model":"m","dataset":"d","device":"cpu",'
            '"trainable_params":1,"total_params":2,"total_steps":3,"estimate":[1]}',
            "field 'estimate' must be a JSON object, got [1]",
        ),
    ],
)
def test_malformed_lines_are_refused_clearly(line: str, message: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(line, where="metrics.jsonl line 7")
    assert str(info.value).startswith("metrics.jsonl line 7: ")
    assert message in str(info.value)


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(EventError, match="not UTF-8"):
        parse_event(b'{"type":"\xff"}')


def test_event_log_writes_the_stream_and_the_file_and_replays(tmp_path: Path) -> None:
    path = tmp_path / ev.METRICS_FILE
    stream = io.StringIO()
    with ev.EventLog(path, stream) as log:
        for event in SAMPLES:
            log.emit(event)
    assert stream.getvalue() == path.read_text()
    assert stream.getvalue().count("\n") == len(SAMPLES)
    assert list(ev.replay(path)) == SAMPLES
    # Appending continues the file (a resumed run writes to the same metrics.jsonl).
    with ev.EventLog(path) as log:
        log.emit(SAMPLES[1])
    assert list(ev.replay(path)) == [*SAMPLES, SAMPLES[1]]


def test_replay_skips_a_torn_last_line_but_not_a_bad_middle_one(tmp_path: Path) -> None:
    path = tmp_path / ev.METRICS_FILE
    good = "\n".join(e.to_json() for e in SAMPLES[:3]) + "\n"
    path.write_text(good + SAMPLES[3].to_json()[:25])  # killed while writing
    assert list(ev.replay(path)) == SAMPLES[:3]
    path.write_text(good + "\n\n")  # blank lines are fine
    assert list(ev.replay(path)) == SAMPLES[:3]
    path.write_text(SAMPLES[0].to_json() + "\n{oops}\n" + SAMPLES[1].to_json() + "\n")
    with pytest.raises(EventError, match=r"metrics\.jsonl line 2: not valid JSON"):
        list(ev.replay(path))
    # A torn line that happens to be complete JSON is still an event.
    path.write_text(good + SAMPLES[3].to_json())
    assert list(ev.replay(path)) == SAMPLES[:4]
