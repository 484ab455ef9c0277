"""The Models page over a real unlocked workspace: list, background import, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from appliance.demo import DEMO_MODEL_NAME
from appliance.session import Session
from appliance.vault import Vault
from appliance.workspace import Workspace
from gui.main_window import MainWindow
from gui.pages.models import ModelsPage


@pytest.fixture
def session(ws: Workspace) -> Session:
    return Session(Vault.create(ws, "models page passphrase", "alice", target_s=0))


def test_import_runs_in_background_and_lists_the_model(
    qtbot: QtBot, session: Session, tiny_llama: Path
) -> None:
    page = ModelsPage(session)
    qtbot.addWidget(page)
    assert page.names() == []
    with qtbot.waitSignal(page.imported, timeout=60_000) as blocker:
        page.start_import(tiny_llama, "tiny")
        assert page.progress.isVisible() or not page.isVisible()
        assert not page.import_folder_button.isEnabled()
    assert blocker.args == ["tiny"]
    assert page.names() == ["tiny"]
    assert page.table.item(0, 1).text() == "LlamaForCausalLM"
    assert page.import_gguf_button.isEnabled()
    assert page.status.text().startswith("Imported tiny")
    with session.registry() as reg:
        assert reg.base_model("tiny")["architecture"] == "LlamaForCausalLM"


def test_refused_import_is_explained_and_changes_nothing(
    qtbot: QtBot, session: Session, tmp_path: Path
) -> None:
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama"}')
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    page = ModelsPage(session)
    qtbot.addWidget(page)
    task = page.start_import(bad, "bad")
    with qtbot.waitSignal(task.done, timeout=30_000):
        pass
    assert page.status.text().startswith("Import failed: ")
    assert "pytorch_model.bin" in page.status.text()
    assert page.names() == []
    assert not (session.ws.models_dir / "bad").exists()


@pytest.mark.slow
def test_first_start_prepares_the_demo_model(qtbot: QtBot, session: Session) -> None:
    window = MainWindow(session.ws.home, session=session)
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.models_page.imported, timeout=300_000):
        assert window.ensure_demo_model()
    assert window.models_page.names() == [DEMO_MODEL_NAME]
    # Already there: a second start imports nothing.
    assert not window.ensure_demo_model()


def test_start_up_settles_runs_whose_process_is_gone(
    qtbot: QtBot, tmp_path: Path, tiny_llama: Path
) -> None:
    import subprocess

    from tests.helpers.training import make_workspace

    _ws, vault = make_workspace(tmp_path, tiny_llama)
    session = Session(vault)
    gone = subprocess.Popen(["true"])
    gone.wait()
    with session.registry() as reg:
        run_id = reg.add_run(
            base_model="tiny", config={}, dataset="facts", state="running", pid=gone.pid
        )
    window = MainWindow(vault.ws.home, session=session)
    qtbot.addWidget(window)
    task = window.settle_runs()
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=30_000):
        pass
    assert task.error is None
    with session.registry() as reg:
        run = reg.run(run_id)
    assert (run["state"], run["failure_reason"]) == ("failed", "process lost")
    assert run_id in window.statusBar().currentMessage()
