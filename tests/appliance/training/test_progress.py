"""RunProgress: the run view-model the CLI's progress line and the Train page both render."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from appliance.training import events as ev
from appliance.training.progress import (
    FAILED,
    FINISHED,
    HOST_LABEL,
    LOST,
    RUNNING,
    SMOOTHING,
    STARTING,
    STOPPED,
    RunProgress,
    event_line,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "runs"
H200_2GPU = DATA / "h200-2gpu.metrics.jsonl"
"""Hand-written: a 6-step run on two H200s (NVML totals as an H200 reports them)."""
TINY_CPU = DATA / "tiny-cpu-stop-resume.metrics.jsonl"
"""Recorded: a real run of the tiny test model on a CPU, stopped at step 5 and resumed."""
H200_TOTAL = 150_754_820_096


def expected_smoothing(losses: list[float]) -> list[float]:
    """Bias-corrected EMA, written out independently of the code under test."""
    out, ema, weight = [], 0.0, 0.0
    for loss in losses:
        if math.isfinite(loss):
            ema = SMOOTHING * ema + (1 - SMOOTHING) * loss
            weight = SMOOTHING * weight + (1 - SMOOTHING)
        out.append(ema / weight if weight else math.nan)
    return out


def test_two_gpu_memory_series_keep_every_reading_per_device() -> None:
    progress = RunProgress.replay(H200_2GPU)
    assert progress.state == FINISHED
    assert progress.device == "cuda:0"
    assert sorted(progress.gpus) == [0, 1]
    assert progress.gpu_label(0) == progress.gpu_label(1).replace("GPU 1", "GPU 0")
    assert progress.gpu_label(1) == "GPU 1: NVIDIA H200"
    gpu0, gpu1 = progress.gpus[0], progress.gpus[1]
    assert [p.step for p in gpu0] == [0, 1, 2, 3, 6]
    assert [p.used for p in gpu0] == [
        12_611_000_000, 27_402_000_000, 28_950_000_000, 28_950_000_000, 28_950_000_000
    ]  # fmt: skip
    assert {p.total for p in gpu0 + gpu1} == {H200_TOTAL}
    assert [p.allocated for p in gpu1] == [
        11_204_000_000, 16_117_000_000, 16_119_000_000, 16_120_000_000, 16_120_000_000
    ]  # fmt: skip
    assert [p.reserved for p in gpu1] == [
        11_790_000_000, 25_777_000_000, 27_325_000_000, 27_325_000_000, 27_325_000_000
    ]  # fmt: skip
    assert [p.peak for p in gpu0] == [
        11_204_000_000, 24_871_000_000, 25_910_000_000, 25_910_000_000, 25_910_000_000
    ]  # fmt: skip
    assert gpu1[1].time == pytest.approx(1772366406.0)
    # The CPU side is kept too (the process's RSS against the machine's RAM).
    assert [h.rss for h in progress.host] == [
        6_442_450_944 + 2_000_000 * s for s in (0, 1, 2, 3, 6)
    ]
    assert {h.ram_total for h in progress.host} == {2_164_000_000_000}
    assert progress.memory_text() == "GPU0 27.0 GiB/140.4 GiB  GPU1 26.5 GiB/140.4 GiB"
    # The rest of the run, from the same file.
    assert [p.step for p in progress.steps] == [1, 2, 3, 4, 5, 6]
    assert [p.eval_loss for p in progress.evals] == [1.9021, 1.3012]
    assert progress.last_checkpoint is not None
    assert progress.last_checkpoint.name == "step-00000004"
    assert progress.final is not None
    assert progress.final.peak_memory == 25_910_000_000
    assert progress.elapsed_s() == pytest.approx(11.5)
    assert progress.eta() == 0.0
    assert progress.fraction == 1.0
    line = progress.status_line()
    assert line.startswith("step 6/6  loss 1.2875 (smoothed ")
    assert "31,850 tok/s" in line
    assert "elapsed 0:00:11  ETA 0:00:00" in line
    assert line.endswith("GPU0 27.0 GiB/140.4 GiB  GPU1 26.5 GiB/140.4 GiB")


def test_a_recorded_cpu_run_replays_into_the_same_figures_as_its_events() -> None:
    events = list(ev.replay(TINY_CPU))
    progress = RunProgress.replay(TINY_CPU)
    steps = [e for e in events if isinstance(e, ev.Step)]
    starts = [e for e in events if isinstance(e, ev.Started)]
    assert len(starts) == 2  # stopped, then resumed
    assert starts[1].start_step > 0
    assert progress.state == FINISHED
    assert progress.launches == 2
    assert progress.run_id == starts[0].run_id
    assert progress.device == "cpu"
    assert [p.step for p in progress.steps] == [s.step for s in steps]
    assert [p.loss for p in progress.steps] == [s.loss for s in steps]
    assert [p.lr for p in progress.steps] == [s.lr for s in steps]
    assert [p.tokens_seen for p in progress.steps] == [s.tokens_seen for s in steps]
    assert [p.epoch for p in progress.steps] == [s.epoch for s in steps]
    smoothed = expected_smoothing([s.loss for s in steps])
    assert [p.smoothed_loss for p in progress.steps] == pytest.approx(smoothed)
    evals = [e for e in events if isinstance(e, ev.Eval)]
    assert [(p.step, p.eval_loss) for p in progress.evals] == [(e.step, e.eval_loss) for e in evals]
    # On a CPU there is no GPU series: the process's RSS against total RAM, labelled as such.
    memory = [e for e in events if isinstance(e, ev.Memory)]
    assert progress.gpus == {}
    assert [h.rss for h in progress.host] == [m.rss for m in memory]
    assert all(h.ram_total and h.rss and h.rss < h.ram_total for h in progress.host)
    assert HOST_LABEL.startswith("CPU")
    assert progress.memory_text().startswith("RAM ")
    # Elapsed: the two launches' spans, not the pause between them.
    stopped = next(e for e in events if isinstance(e, ev.Stopped))
    spans = (stopped.time - starts[0].time) + (events[-1].time - starts[1].time)
    assert progress.elapsed_s() == pytest.approx(spans, abs=1.5)
    assert progress.elapsed_s() < events[-1].time - events[0].time
    finished = next(e for e in events if isinstance(e, ev.Finished))
    assert progress.final == finished
    assert progress.eval_loss == finished.eval_loss
    assert progress.status_line().startswith(f"step {finished.step}/{finished.step}  loss ")


def test_events_fed_in_arbitrary_chunks_give_the_replayed_model() -> None:
    data = TINY_CPU.read_bytes()
    reader = ev.reader("test stream")
    live = RunProgress()
    rng = random.Random(5)
    start = 0
    while start < len(data):
        end = start + rng.randint(1, 300)
        for event in reader.feed(data[start:end]):
            live.apply(event)
        start = end
    for event in reader.finish():
        live.apply(event)
    replayed = RunProgress.replay(TINY_CPU)
    assert live == replayed
    assert reader.bad_lines == []


def _events(run: str = "run-x") -> list[ev.Event]:
    t = 1000.0
    return [
        ev.Started(
            run_id=run, time=t, model="m", dataset="d@1", device="cpu", trainable_params=10,
            total_params=100, total_steps=6,
        ),
        *[
            ev.Step(
                run_id=run, time=t + s, step=s, total_steps=6, epoch=s / 6, loss=loss, lr=1e-3,
                tokens_per_s=50.0, eta_s=float(6 - s), tokens_seen=10 * s,
            )
            for s, loss in ((1, 2.0), (2, math.nan), (3, 1.0), (4, 0.5), (5, 0.4))
        ],
        ev.Checkpoint(run_id=run, time=t + 4.1, step=4, name="step-00000004"),
    ]  # fmt: skip


def test_a_diverged_loss_leaves_the_smoothed_curve_alone() -> None:
    progress = RunProgress()
    for event in _events()[:3]:
        progress.apply(event)
    first, second = progress.steps
    assert first.smoothed_loss == pytest.approx(2.0)  # bias correction: the first point is itself
    assert math.isnan(second.loss)
    assert second.smoothed_loss == pytest.approx(2.0)
    assert "loss nan" in progress.status_line()


def test_steps_redone_after_a_kill_replace_the_lost_ones() -> None:
    progress = RunProgress()
    for event in _events():
        progress.apply(event)
    assert progress.state == RUNNING
    assert progress.eta(now=1000.0 + 5 + 0.5) == pytest.approx(0.5)
    progress.mark_lost("the training process was killed by SIGKILL")
    assert (progress.state, progress.failure) == (
        LOST,
        "the training process was killed by SIGKILL",
    )
    resumed = [
        ev.Started(
            run_id="run-x", time=2000.0, model="m", dataset="d@1", device="cpu",
            trainable_params=10, total_params=100, total_steps=6, start_step=4,
        ),
        ev.Step(
            run_id="run-x", time=2001.0, step=5, total_steps=6, epoch=5 / 6, loss=0.45,
            lr=1e-3, tokens_per_s=50.0, eta_s=1.0,
        ),
    ]  # fmt: skip
    for event in resumed:
        progress.apply(event)
    assert progress.state == RUNNING
    assert progress.failure is None
    assert [p.step for p in progress.steps] == [1, 2, 3, 4, 5]
    assert progress.steps[-1].loss == 0.45  # the redone step 5, not the lost one
    assert progress.smoothed_loss == pytest.approx(
        expected_smoothing([2.0, math.nan, 1.0, 0.5, 0.45])[-1]
    )
    assert progress.elapsed_s() == pytest.approx(5.0 + 1.0)
    assert progress.start_step == 4


def test_states_and_their_lines() -> None:
    progress = RunProgress()
    assert progress.state == STARTING
    assert progress.status_line() == "starting"
    for event in _events()[:2]:
        progress.apply(event)
    stopped = ev.Stopped(run_id="run-x", time=1002.0, step=1, checkpoint="step-00000001")
    progress.apply(stopped)
    assert progress.state == STOPPED
    assert event_line(stopped) == "stopped at step 1 (checkpoint step-00000001)"
    failed = ev.Failed(run_id="run-x", time=1003.0, message="CUDA out of memory at step 2")
    progress.apply(failed)
    assert (progress.state, progress.failure) == (FAILED, "CUDA out of memory at step 2")
    assert event_line(failed) == "failed: CUDA out of memory at step 2"
    assert event_line(_events()[1]) is None  # steps are the status line's, not a line each
    assert event_line(_events()[0]) == ("Training on cpu: 6 steps, 10 trainable of 100 parameters")
