"""The Train page's charts and their series, fed from recorded runs: real H200 recordings, a
hand-written 2-GPU file and a real CPU run that was stopped and resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pytestqt.qtbot import QtBot

from appliance.training import events as ev
from appliance.training.overview import RunSummary
from appliance.training.progress import HOST_LABEL, RunProgress
from gui.chart_data import ChartData, Columns
from gui.pages.train import TrainPage, load_history
from gui.widgets.run_charts import GIB, RunCharts

DATA = Path(__file__).resolve().parents[1] / "data"
TWO_GPUS = DATA / "runs" / "h200-2gpu.metrics.jsonl"
H200_RUN = DATA / "gpu" / "h200-train-metrics.jsonl"
H200_CHECK = DATA / "gpu" / "h200-gpu-check-metrics.jsonl"
CPU_RESUMED = DATA / "runs" / "tiny-cpu-stop-resume.metrics.jsonl"


def _summary(tmp_path: Path, recording: Path, state: str = "finished") -> RunSummary:
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(recording, folder / "metrics.jsonl")
    (folder / "train.log").write_text("first line\nlast line\n")
    run_id = json.loads(recording.read_text().splitlines()[0])["run_id"]
    return RunSummary(run_id, state, "m", "d@1", (), "", "", folder, None, False, {})


def _memory(recording: Path) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in recording.read_text().splitlines() if line.strip())
    return [e for e in lines if e["type"] == "memory"]


def _charts(qtbot: QtBot, data: ChartData) -> RunCharts:
    charts = RunCharts()
    qtbot.addWidget(charts)
    charts.show()
    charts.show_data(data)
    return charts


@pytest.mark.parametrize("recording", [TWO_GPUS, H200_RUN, H200_CHECK])
def test_recorded_gpu_memory_replays_into_one_chart_per_device(
    qtbot: QtBot, tmp_path: Path, recording: Path
) -> None:
    history = load_history(_summary(tmp_path, recording))
    charts = _charts(qtbot, history.data)
    memory = _memory(recording)
    indices = sorted({g["index"] for e in memory for g in e["gpus"]})
    titles = charts.memory_titles()
    assert len(titles) == len(indices)
    for index, title in zip(indices, titles, strict=True):
        readings = [(e["time"], g) for e in memory for g in e["gpus"] if g["index"] == index]
        total = readings[-1][1]["total"]
        assert title == f"GPU {index}: NVIDIA H200: memory (GiB; total {total / GIB:,.1f})"
        for key in ("used", "total", "allocated", "reserved", "peak"):
            x, y = charts.series(f"gpu:{index}.{key}")
            assert x.tolist() == [t for t, _ in readings]
            expected = [np.nan if g[key] is None else g[key] / GIB for _, g in readings]
            np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert HOST_LABEL not in " ".join(titles)  # GPU runs show the GPUs, not the host


def test_two_gpus_in_the_train_page_from_the_runs_list(qtbot: QtBot, tmp_path: Path) -> None:
    page = TrainPage(None)
    qtbot.addWidget(page)
    page.show()
    qtbot.waitUntil(lambda: page.charts is not None, timeout=120_000)
    summary = _summary(tmp_path, TWO_GPUS)
    page.runs_table.show_runs([summary])
    with qtbot.waitSignal(page.history_loaded, timeout=30_000):
        page.runs_table.selectRow(0)
    assert [t.split(":")[0] for t in page.charts.memory_titles()] == ["GPU 0", "GPU 1"]
    _, used = page.charts.series("gpu:1.used")
    assert used[1] == pytest.approx(26_873_000_000 / GIB)
    steps, losses = page.charts.series("loss")
    progress = RunProgress.replay(TWO_GPUS)
    assert steps.tolist() == [p.step for p in progress.steps]
    assert losses.tolist() == pytest.approx([p.loss for p in progress.steps])
    assert page.console.lines() == ["first line", "last line"]
    assert page.bar.value() == progress.step
    assert "finished" in page.run_state.text()


def test_a_cpu_run_shows_the_process_rss_against_total_ram(qtbot: QtBot, tmp_path: Path) -> None:
    history = load_history(_summary(tmp_path, CPU_RESUMED))
    charts = _charts(qtbot, history.data)
    (title,) = charts.memory_titles()
    assert title.startswith(f"{HOST_LABEL} (GiB; total ")
    rows = [e for e in _memory(CPU_RESUMED) if e.get("rss") is not None]
    x, rss = charts.series("host.rss")
    assert x.tolist() == [e["time"] for e in rows]
    np.testing.assert_allclose(rss, [e["rss"] / GIB for e in rows])
    _, total = charts.series("host.ram_total")
    np.testing.assert_allclose(total, [e["ram_total"] / GIB for e in rows])


def test_x_axis_and_log_scale(qtbot: QtBot, tmp_path: Path) -> None:
    history = load_history(_summary(tmp_path, H200_RUN))
    charts = _charts(qtbot, history.data)
    charts.set_x_axis("epoch")
    x, _ = charts.series("loss")
    assert x.tolist() == [p.epoch for p in history.progress.steps]
    eval_x, _ = charts.series("eval")
    assert eval_x.tolist() == [e.epoch for e in history.progress.evals]
    charts.set_log_scale(True)
    assert charts.loss_plot.getPlotItem().ctrl.logYCheck.isChecked()


def test_events_one_by_one_give_the_same_series_as_a_replay() -> None:
    progress = RunProgress()
    data = ChartData()
    redraws = []
    for event in ev.replay(CPU_RESUMED):
        progress.apply(event)
        changed = data.add(event, progress)
        if "all" in changed:
            data = ChartData.from_progress(progress)
        redraws.append(changed)
    assert {"steps"} in redraws
    whole = ChartData.from_progress(RunProgress.replay(CPU_RESUMED))
    for name in ("step", "loss", "smoothed", "lr", "tokens_per_s"):
        np.testing.assert_array_equal(data.steps[name], whole.steps[name])
    np.testing.assert_array_equal(data.evals["eval_loss"], whole.evals["eval_loss"])
    np.testing.assert_array_equal(data.host["rss"], whole.host["rss"])
    assert data.steps["step"].tolist() == list(range(1, 13))


def test_a_resume_after_a_kill_redraws_from_its_checkpoint() -> None:
    run = "run-1"

    def step(n: int) -> ev.Step:
        return ev.Step(
            run_id=run,
            time=n,
            step=n,
            total_steps=4,
            epoch=n / 4,
            loss=1 / n,
            lr=1e-3,
            tokens_per_s=10.0,
        )

    def started(at: int) -> ev.Started:
        return ev.Started(
            run_id=run,
            time=at,
            model="m",
            device="cpu",
            dataset="d@1",
            trainable_params=1,
            total_params=2,
            total_steps=4,
            start_step=at,
        )

    progress, data = RunProgress(), ChartData()
    seen = []
    for event in (started(0), step(1), step(2), step(3), started(1), step(2)):
        progress.apply(event)
        changed = data.add(event, progress)
        if "all" in changed:
            data = ChartData.from_progress(progress)
        seen.append(changed)
    assert seen[4] == {"all"}  # steps 2 and 3 of the killed launch gave way
    assert data.steps["step"].tolist() == [1, 2]


def test_columns_grow_without_losing_points() -> None:
    columns = Columns(("a", "b"), capacity=1)
    for i in range(1000):
        columns.append(i, None if i % 2 else i * 2)
    assert len(columns) == 1000
    assert columns["a"].tolist() == list(range(1000))
    assert np.isnan(columns["b"][1])
    assert columns["b"][998] == 1996
