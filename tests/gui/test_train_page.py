"""The Train page over a real workspace and real training children of the tiny model.

Each real run costs tens of seconds here (the child loads torch, transformers and the model),
so the scenarios share runs where they can: one run is started, stopped and resumed by clicking
and compared with an uninterrupted run trained in this process (the core's exact-resume check).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QDialog, QMessageBox
from pytestqt.qtbot import QtBot

from appliance import datasets
from appliance.registry import Registry
from appliance.registry.rows import RunRow
from appliance.training import runs
from appliance.training.process import process_alive
from appliance.training.progress import RunProgress
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from gui import live_run as train_page
from gui.main_window import MainWindow
from gui.pages.train import KEEP, TrainPage
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
    tiny_config,
    trainer_for,
    write_jsonl,
)

RUN_MS = 300_000
"""A real run of the tiny model, its child's start included (slow on a busy 2-core machine)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Any:
    return make_workspace(tmp_path_factory.mktemp("train-page"), tiny_llama)


@pytest.fixture
def workspace(store: Any) -> UnlockedWorkspace:
    ws, _vault = store
    return UnlockedWorkspace(Vault.unlock(ws, PASS))


def _page(qtbot: QtBot, workspace: UnlockedWorkspace) -> TrainPage:
    page = TrainPage(workspace)
    qtbot.addWidget(page)
    page.resize(1280, 820)
    page.show()
    qtbot.waitUntil(
        lambda: page.charts is not None and page.setup.model_choice.currentData() == "tiny",
        timeout=120_000,
    )
    return page


def _set_up(qtbot: QtBot, page: TrainPage, adapter: str, *settings: str) -> None:
    """Choose the quick-test preset with the tiny run's settings and name the adapter."""
    page.setup.preset_choice.setCurrentText("quick-test")
    page.setup.form.set_config(tiny_config(*settings))
    page.setup.adapter_name.clear()
    qtbot.keyClicks(page.setup.adapter_name, adapter)
    assert page.setup.form.errors == {}
    qtbot.waitUntil(lambda: not page.setup.preflight_busy, timeout=60_000)
    assert page.setup.preflight.fits is True
    assert page.setup.start_button.isEnabled()


def _click(qtbot: QtBot, button: Any) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _no_dialog() -> None:
    shown = [w for w in QApplication.topLevelWidgets() if isinstance(w, QDialog) and w.isVisible()]
    assert not shown, [w.windowTitle() for w in shown]


def _runs(vault: Vault) -> list[RunRow]:
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        return reg.runs.all()


def _recorded(vault: Vault, run_id: str) -> RunProgress:
    return RunProgress.replay(vault.ws.runs_dir / run_id / "metrics.jsonl")


def test_start_stop_and_resume_by_clicking_end_as_an_uninterrupted_run(
    qtbot: QtBot, workspace: UnlockedWorkspace, store: Any
) -> None:
    _ws, vault = store
    config = tiny_config()
    reference_run = new_run(vault, config, adapter="reference")
    assert trainer_for(vault, reference_run, CaptureLog(None)).run() == "finished"
    expected = folder_adapter(vault, reference_run)

    page = _page(qtbot, workspace)
    _set_up(qtbot, page, "clicked")
    before = len(_runs(vault))
    _click(qtbot, page.setup.start_button)
    qtbot.waitUntil(lambda: page.live is not None and page.live.pid is not None, timeout=60_000)
    live = page.live
    assert live is not None
    assert live.own
    run_id = live.run_id
    assert not page.setup.start_button.isEnabled()

    # A second Start while the run is active is refused in the page; nothing is created.
    page.start()
    assert f"Run {run_id} is active" in page.setup.message.text()
    assert len(_runs(vault)) == before + 1

    with qtbot.waitSignal(page.run_settled, timeout=RUN_MS) as stopped:
        qtbot.waitUntil(lambda: page.progress.step >= 2, timeout=RUN_MS)
        assert page.stop_button.isEnabled()
        _click(qtbot, page.stop_button)
        assert not page.stop_button.isEnabled()
    assert stopped.args[0].state == "stopped"
    qtbot.waitUntil(lambda: page.runs_table.state_of(run_id) == "stopped", timeout=30_000)
    assert "Stopped" in page.status.text()
    assert page.resume_button.isEnabled()
    first_launch = page.progress.step
    assert 2 <= first_launch < 8

    with qtbot.waitSignal(page.run_settled, timeout=RUN_MS) as finished:
        _click(qtbot, page.resume_button)
    result = finished.args[0]
    assert (result.state, result.adapter) == ("finished", "clicked@1")

    # The charts received every step and every evaluation the run recorded, both launches.
    recorded = _recorded(vault, run_id)
    steps, losses = page.charts.series("loss")
    assert steps.tolist() == list(range(1, 9))
    assert losses.tolist() == pytest.approx([p.loss for p in recorded.steps])
    eval_steps, _ = page.charts.series("eval")
    assert eval_steps.tolist() == [e.step for e in recorded.evals]
    assert [e.step for e in recorded.evals][:1] == [0]
    assert page.charts.memory_titles()[0].startswith("CPU: training process RSS of total RAM")
    assert page.bar.value() == page.bar.maximum() == 8
    assert "Finished: adapter clicked@1" in page.status.text()
    qtbot.waitUntil(lambda: page.runs_table.state_of(run_id) == "finished", timeout=30_000)
    assert page.runs_table.summary(run_id).adapters == ("clicked@1",)  # type: ignore[union-attr]
    assert page.console.lines(), "the log console shows the child's log"
    # The registry holds the new version, equal to the uninterrupted run's adapter.
    assert max_diff(registered_adapter(vault, "clicked@1"), expected) <= 1e-6
    _no_dialog()


def test_a_killed_child_shows_failed_with_its_last_log_lines(
    qtbot: QtBot, workspace: UnlockedWorkspace, store: Any
) -> None:
    _ws, vault = store
    page = _page(qtbot, workspace)
    _set_up(qtbot, page, "killed", "max_steps=40", "save_every=0", "eval_every=0")
    _click(qtbot, page.setup.start_button)
    with qtbot.waitSignal(page.run_settled, timeout=RUN_MS) as settled:
        qtbot.waitUntil(lambda: page.progress.step >= 1, timeout=RUN_MS)
        live = page.live
        assert live is not None
        assert live.pid is not None
        os.kill(live.pid, signal.SIGKILL)
    result = settled.args[0]
    assert result.state == "failed"
    assert "killed by SIGKILL" in result.message
    text = page.failure.text()
    assert page.failure.isVisible()
    assert "killed by SIGKILL" in text
    assert "Last lines of its log:" in text
    log = (vault.ws.runs_dir / result.run_id / "train.log").read_text()
    assert result.log_tail
    assert all(line in log for line in result.log_tail)
    assert result.log_tail[-1] in text
    # Not a spinner: the bar is a plain bar again and nothing can be stopped.
    assert page.bar.maximum() > 0
    assert not page.stop_button.isEnabled()
    assert not page.kill_button.isEnabled()
    qtbot.waitUntil(lambda: page.runs_table.state_of(result.run_id) == "failed", timeout=30_000)
    assert page.resume_button.isEnabled()
    _no_dialog()


GARBAGE_WORKER = (
    "import sys  # appliance.training.worker\n"
    "print('this is not an event', flush=True)\n"
    'print(\'{"type": "step"}\', flush=True)\n'
    "print('fake worker is broken', file=sys.stderr, flush=True)\n"
    "sys.exit(3)\n"
)


def test_a_worker_printing_garbage_is_reported_in_the_page(
    qtbot: QtBot, workspace: UnlockedWorkspace, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ws, vault = store
    monkeypatch.setattr(
        runs,
        "worker_command",
        lambda folder, threads=None: [sys.executable, "-c", GARBAGE_WORKER, str(folder)],
    )
    page = _page(qtbot, workspace)
    _set_up(qtbot, page, "garbled")
    with qtbot.waitSignal(page.run_settled, timeout=60_000) as settled:
        _click(qtbot, page.setup.start_button)
    result = settled.args[0]
    assert result.state == "failed"
    assert result.message == "the training process exited with code 3 without a report"
    assert any("not an event" in n and "not valid JSON" in n for n in page.notices), page.notices
    assert any("lacks" in n or "missing" in n for n in page.notices), page.notices
    assert "fake worker is broken" in page.failure.text()
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        assert reg.runs.get(result.run_id)["state"] == "failed"
        assert [a for a in reg.adapters.versions() if a["name"] == "garbled"] == []
    _no_dialog()


def test_refused_settings_show_the_cores_message_at_the_field(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    page = _page(qtbot, workspace)
    _set_up(qtbot, page, "refusals")
    form = page.setup.form
    cases = [
        ("lora.rank", "0", "invalid training config: lora.rank is 0; set it between 1 and 1024"),
        ("optim.learning_rate", "-1", "optim.learning_rate is -1.0; set it between 0 and 1"),
        ("lora.rank", "many", "setting lora.rank must be a whole number; got 'many'"),
        (
            "data.max_seq_length",
            "1024",
            "data.max_seq_length is 1024, longer than the 512-token context of model tiny; "
            "set it to 512 or less",
        ),
    ]
    for key, text, message in cases:
        good = form.fields[key].text()
        form.set_value(key, text)
        assert message in form.errors[key]
        error = form.fields[key].error
        assert error.isVisible()
        assert message in error.text()
        assert not page.setup.start_button.isEnabled()
        assert "Correct the settings" in page.setup.start_button.toolTip()
        form.set_value(key, good)
        assert form.errors == {}
        assert not error.isVisible()
        assert page.setup.start_button.isEnabled()
    # Choosing warm-up steps switches the ratio off, as --set does, and the form shows it.
    form.set_value("optim.warmup_ratio", "0.1")
    form.set_value("optim.warmup_steps", "3")
    assert form.errors == {}
    assert form.fields["optim.warmup_ratio"].text() == "0"
    _no_dialog()


def test_a_dataset_deleted_while_chosen_is_refused_and_nothing_is_made(
    qtbot: QtBot, workspace: UnlockedWorkspace, store: Any, tmp_path: Path
) -> None:
    _ws, vault = store
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        source = write_jsonl(tmp_path / "gone.jsonl", chat_rows(10))
        datasets.import_file(vault, reg, source, "soon-gone", eval_fraction=0.2)
    page = _page(qtbot, workspace)
    _set_up(qtbot, page, "orphan")
    combo = page.setup.dataset_choice
    combo.setCurrentIndex(combo.findData("soon-gone@1"))
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        datasets.delete_version(vault, reg, datasets.resolve(reg, "soon-gone@1"))
    before = _runs(vault)
    with qtbot.waitSignal(page.runs_listed, timeout=30_000):
        _click(qtbot, page.setup.start_button)
    assert page.setup.message.isVisible()
    assert "soon-gone" in page.setup.message.text()
    assert _runs(vault) == before
    assert combo.findData("soon-gone@1") == -1  # the choices were read anew
    assert page.live is None
    _no_dialog()


def test_the_suggested_fix_makes_a_red_estimate_green(
    qtbot: QtBot, workspace: UnlockedWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance import gpu
    from appliance.gpu import GpuReading, GpuState
    from appliance.training import preflight

    page = _page(qtbot, workspace)
    _set_up(qtbot, page, "fits", "micro_batch_size=64", "gradient_accumulation_steps=1")
    config = page.setup.form.config()
    assert config is not None
    model_config = preflight.json.loads(
        (workspace.ws.models_dir / "tiny" / "files" / "config.json").read_text()
    )
    roomy = GpuState([GpuReading(0, "Small GPU", 0, 10**12, 0, 30)], "test")
    need = preflight.check(model_config, config, gpus=roomy).estimate
    assert need is not None
    free = need.total_bytes - need.item("logits").bytes // 2
    small = GpuState([GpuReading(0, "Small GPU", 10**11 - free, 10**11, 0, 30)], "test")
    monkeypatch.setattr(preflight, "read_gpus", lambda: small)
    monkeypatch.setattr(gpu, "read_gpus", lambda: small)  # the placement's check reads it too
    page.setup.form.set_value("lora.rank", "9")  # any change recomputes the estimate
    qtbot.waitUntil(lambda: not page.setup.preflight_busy, timeout=60_000)
    view = page.setup.preflight
    assert view.fits is False
    assert view.preflight is not None
    assert view.preflight.device_label == "GPU 0: Small GPU"
    assert "short" in view.summary.text()
    assert "logits for the loss" in view.toolTip()  # the breakdown on hover
    assert view.fix_button.isVisible()
    fix = view.preflight.fix
    assert fix is not None
    _click(qtbot, view.fix_button)
    for assignment in fix.assignments:
        key, _, value = assignment.partition("=")
        field = next(f for k, f in page.setup.form.fields.items() if k.endswith(key))
        assert field.text() == value
    qtbot.waitUntil(lambda: not page.setup.preflight_busy, timeout=60_000)
    assert view.fits is True
    assert not view.fix_button.isVisible()


def test_a_run_started_with_the_cli_detach_is_followed_live(
    qtbot: QtBot, workspace: UnlockedWorkspace, store: Any
) -> None:
    ws, _vault = store
    cli = CliRunner(ws.home)
    sets = [x for s in ("max_steps=8", "max_seq_length=128", "eval_every=3") for x in ("--set", s)]
    started = cli(
        "train", "--model", "tiny", "--dataset", "facts", "--adapter", "detached",
        "--preset", "quick-test", *sets, "--detach",
        env={"APPLIANCE_PASSPHRASE": PASS},
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    page = _page(qtbot, workspace)
    qtbot.waitUntil(lambda: page.live is not None, timeout=60_000)
    live = page.live
    assert live is not None
    assert not live.own
    replayed = page.live_progress.step
    seen: list[Any] = []
    live.event_received.connect(seen.append)
    with qtbot.waitSignal(page.run_settled, timeout=RUN_MS) as settled:
        pass
    assert settled.args[0].state == "finished"
    assert settled.args[0].adapter == "detached@1"
    assert replayed < 8
    assert seen, "events arrived while it ran, not only from the replay"
    steps, _ = page.charts.series("loss")
    assert steps.tolist() == list(range(1, 9))
    qtbot.waitUntil(lambda: page.runs_table.state_of(live.run_id) == "finished", timeout=30_000)


def test_closing_the_window_can_keep_a_run_training_for_the_next_start(
    qtbot: QtBot, workspace: UnlockedWorkspace, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, _vault = store
    asked: list[str] = []

    def keep(_page: TrainPage, run_id: str) -> str:
        asked.append(run_id)
        return KEEP

    monkeypatch.setattr(TrainPage, "ask_on_close", keep)
    window = MainWindow(ws.home, workspace=workspace)
    qtbot.addWidget(window)
    window.show()
    page = window.show_page("Train")
    assert isinstance(page, TrainPage)
    qtbot.waitUntil(
        lambda: page.charts is not None and page.setup.model_choice.currentData() == "tiny",
        timeout=120_000,
    )
    _set_up(qtbot, page, "background", "max_steps=60", "save_every=0", "eval_every=0")
    _click(qtbot, page.setup.start_button)
    qtbot.waitUntil(lambda: page.progress.step >= 1, timeout=RUN_MS)
    live = page.live
    assert live is not None
    assert live.pid is not None
    run_id, pid = live.run_id, live.pid
    window.close()
    assert asked == [run_id]
    assert not window.isVisible()
    assert process_alive(pid, run_id), "the run trains on without the window"

    again = _page(qtbot, UnlockedWorkspace(Vault.unlock(ws, PASS)))
    qtbot.waitUntil(lambda: again.live is not None and again.live.run_id == run_id, timeout=60_000)
    at = again.live_progress.step
    qtbot.waitUntil(lambda: again.live_progress.step > at, timeout=RUN_MS)

    # Stop without saving asks first; "No" leaves the run training.
    answers = [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]
    questions: list[str] = []

    def answer(*args: Any, **kwargs: Any) -> QMessageBox.StandardButton:
        questions.append(args[2])
        return answers.pop(0)

    monkeypatch.setattr(QMessageBox, "question", answer)
    _click(qtbot, again.kill_button)
    assert len(questions) == 1
    assert run_id in questions[0]
    assert process_alive(pid, run_id)
    with qtbot.waitSignal(again.run_settled, timeout=RUN_MS) as settled:
        _click(qtbot, again.kill_button)
    result = settled.args[0]
    assert (result.state, result.message) == ("failed", train_page.KILLED_REASON)
    assert not process_alive(pid, run_id)
    qtbot.waitUntil(lambda: again.runs_table.state_of(run_id) == "failed", timeout=30_000)


# --- the device picker (a faked NVML: no GPU is used and no run starts) ------------------------


def _two_gpus(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Two fake GPUs for the page, the estimate and the placement check alike."""
    from appliance import gpu
    from appliance.gpu import GpuReading, GpuState
    from appliance.training import preflight

    state = GpuState([GpuReading(i, "Fake GPU", 0, 10**12, 0, 30) for i in (0, 1)], "test")
    monkeypatch.setattr(gpu, "read_gpus", lambda: state)  # runs.plan_topology imports it late
    monkeypatch.setattr(preflight, "read_gpus", lambda: state)
    return state


def _picker(page: TrainPage) -> list[tuple[str, str]]:
    combo = page.setup.device_choice
    return [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]


def test_the_picker_offers_the_allowed_gpus_and_all_of_them_together(
    qtbot: QtBot, workspace: UnlockedWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance import preferences
    from appliance.training.placement import Placement

    state = _two_gpus(monkeypatch)
    page = _page(qtbot, workspace)
    page.show_gpus(state)
    assert _picker(page) == [
        ("GPU 0: Fake GPU", "0"),
        ("GPU 1: Fake GPU", "1"),
        ("All 2 allowed GPUs (DDP)", "0,1"),
    ]
    # The first GPU alone by default, as before the picker had several GPUs.
    assert page.setup.placement == Placement(gpus="0")
    # The Settings page narrows the choice at once...
    page.setup.set_training_gpus((1,))
    assert _picker(page) == [("GPU 1: Fake GPU", "1")]
    page.setup.set_training_gpus(())
    assert _picker(page) == [("CPU (Settings allows no GPU for training)", "none")]
    # ...and a page opened later reads the store's setting.
    preferences.update(workspace.ws, training_gpus=(1,))
    try:
        later = _page(qtbot, workspace)
        later.show_gpus(state)
        assert _picker(later) == [("GPU 1: Fake GPU", "1")]
        assert later.setup.placement == Placement(gpus="1")
    finally:
        preferences.save(workspace.ws, preferences.Preferences())


def test_all_allowed_gpus_estimates_per_device_and_launches_on_both(
    qtbot: QtBot, workspace: UnlockedWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.errors import UsageError
    from appliance.training.placement import Placement, check_batch_division, parse_gpus

    state = _two_gpus(monkeypatch)
    page = _page(qtbot, workspace)
    page.show_gpus(state)
    rows = page.setup.train_rows["facts@1"]

    def divides(size: int) -> bool:
        try:
            check_batch_division(rows, size, 2)
        except UsageError:
            return False
        return True

    size = next(s for s in range(2, 9) if divides(s))
    _set_up(qtbot, page, "both", f"micro_batch_size={size}")
    page.setup.device_choice.setCurrentIndex(page.setup.device_choice.findData("0,1"))
    qtbot.waitUntil(lambda: not page.setup.preflight_busy, timeout=60_000)
    found = page.setup.preflight.preflight
    assert found is not None
    assert found.device_label == "GPUs 0, 1 (Fake GPU), nccl"  # the per-device estimate
    assert "  GPU 1 (Fake GPU):" in "\n".join(found.lines)
    request = page.setup.request()
    assert request is not None
    assert request.placement == Placement(gpus="0,1")  # what 'appliance train --gpus 0,1' builds
    assert parse_gpus(request.placement.gpus) == [0, 1]

    handed: list[Placement | None] = []

    def prepare(*_args: Any, placement: Placement | None = None, **_kwargs: Any) -> Any:
        handed.append(placement)
        raise UsageError("stopped by the test before anything starts")

    monkeypatch.setattr(runs, "prepare_launch", prepare)
    _click(qtbot, page.setup.start_button)
    qtbot.waitUntil(lambda: bool(handed), timeout=60_000)
    assert handed == [Placement(gpus="0,1")]
    qtbot.waitUntil(lambda: page.live is not None and not page.live.active, timeout=60_000)
    assert "stopped by the test" in page.failure.text()
