"""The Models page over a real unlocked workspace: imports in a real child, cancel, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QDialog
from pytestqt.qtbot import QtBot

from appliance.demo import DEMO_MODEL_NAME
from appliance.errors import NotFoundError
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import Workspace
from gui.main_window import MainWindow
from gui.pages import models as models_page
from gui.pages.models import ModelsPage
from gui.process import JobProcess
from tests.helpers.tables import table_item

WAIT_MS = 120_000


@pytest.fixture
def workspace(ws: Workspace) -> UnlockedWorkspace:
    return UnlockedWorkspace(Vault.create(ws, "models page passphrase", "alice", target_s=0))


def _page(qtbot: QtBot, workspace: UnlockedWorkspace) -> ModelsPage:
    page = ModelsPage(workspace)
    qtbot.addWidget(page)
    page.show()
    return page


def _stages(page: ModelsPage, job: JobProcess) -> list[str]:
    """The progress bar's label at each progress event, without repeats."""
    shown: list[str] = []

    def record(_done: int, _total: int, _stage: str) -> None:
        text = page.progress.format()
        if not shown or shown[-1] != text:
            shown.append(text)

    job.progress.connect(record)
    return shown


def _nothing_left(workspace: UnlockedWorkspace, name: str) -> None:
    """No registry row, no model folder, no staging folder, and the writer lock is free."""
    with workspace.registry() as reg, pytest.raises(NotFoundError):
        reg.models.get(name)
    assert not (workspace.ws.models_dir / name).exists()
    assert list(workspace.ws.tmp_dir.iterdir()) == []
    with workspace.ws.writer("test", wait_s=0):
        pass


def _no_dialog() -> None:
    dialogs = [w for w in QApplication.topLevelWidgets() if isinstance(w, QDialog)]
    assert not [d for d in dialogs if d.isVisible()]


def test_import_runs_in_a_child_and_lists_the_model(
    qtbot: QtBot, workspace: UnlockedWorkspace, tiny_llama: Path
) -> None:
    page = _page(qtbot, workspace)
    assert page.names() == []
    with qtbot.waitSignal(page.imported, timeout=WAIT_MS) as blocker:
        job = page.start_import(tiny_llama, "tiny")
        stages = _stages(page, job)
        assert page.progress.isVisible()
        assert page.cancel_button.isVisible()
        assert not page.import_folder_button.isEnabled()
        assert job.child.pid != os.getpid()
    assert blocker.args == ["tiny"]
    assert stages == ["Checking files: %p%", "Copying: %p%", "Verifying: %p%"]
    assert page.names() == ["tiny"]
    assert table_item(page.table, 0, 1).text() == "LlamaForCausalLM"
    assert page.import_gguf_button.isEnabled()
    assert not page.cancel_button.isVisible()
    assert not page.progress.isVisible()
    assert page.status.text() == "Imported tiny (LlamaForCausalLM)."
    with workspace.registry() as reg:
        assert reg.models.get("tiny")["architecture"] == "LlamaForCausalLM"
        (audit,) = reg.audit_rows(action="model.import")
        assert audit["keyed"]  # the job was handed the audit key over its stdin
        assert reg.verify_audit().ok


def test_cancel_stops_the_child_and_leaves_nothing(
    qtbot: QtBot, workspace: UnlockedWorkspace, tiny_llama: Path
) -> None:
    page = _page(qtbot, workspace)
    job = page.start_import(tiny_llama, "tiny")
    # Verifying loads the tokenizer (transformers: seconds to import), with the whole copy
    # staged: the cleanup has a full folder to remove.
    qtbot.waitUntil(lambda: page.progress.format().startswith("Verifying"), timeout=WAIT_MS)
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
        assert page.status.text() == "Cancelling the import…"
        assert not page.cancel_button.isEnabled()
    assert job.outcome is not None
    assert job.outcome.exit_code == 130  # the child cleaned up and reported, not killed
    assert page.status.text() == "Import cancelled; nothing was added to the workspace."
    assert page.names() == []
    assert page.import_folder_button.isEnabled()
    _nothing_left(workspace, "tiny")
    _no_dialog()


def test_a_stuck_import_can_be_killed_and_the_next_one_cleans_up(
    qtbot: QtBot, workspace: UnlockedWorkspace, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A watchdog shorter than the tokenizer's load: the import looks stuck while verifying.
    monkeypatch.setattr(models_page, "IMPORT_HANG_S", 0.3)
    page = _page(qtbot, workspace)
    job = page.start_import(tiny_llama, "tiny")
    qtbot.waitUntil(lambda: page.progress.format().startswith("Verifying"), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: page.cancel_button.text() == "Kill", timeout=WAIT_MS)
    assert page.status.text().startswith(
        "The import seems stuck: the model-import job has sent no progress for 0.3 s"
    )
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
    assert page.status.text().startswith(
        "Import failed: the model-import process was killed from the desktop app"
    )
    assert page.names() == []
    with workspace.registry() as reg, pytest.raises(NotFoundError):
        reg.models.get("tiny")
    # SIGKILL left the staged copy, named after its (now dead) process; the next import (a
    # writer) removes it, then succeeds.
    [staged] = list(workspace.ws.tmp_dir.iterdir())
    assert staged.name.startswith("import-tiny.pid")
    assert staged.name.endswith(".tmp")
    monkeypatch.setattr(models_page, "IMPORT_HANG_S", 600.0)
    with qtbot.waitSignal(page.imported, timeout=WAIT_MS):
        page.start_import(tiny_llama, "tiny")
    assert page.names() == ["tiny"]
    assert list(workspace.ws.tmp_dir.iterdir()) == []


def test_gguf_import_converts_in_the_child(
    qtbot: QtBot, workspace: UnlockedWorkspace, tiny_gguf: Path
) -> None:
    page = _page(qtbot, workspace)
    with qtbot.waitSignal(page.imported, timeout=WAIT_MS):
        job = page.start_import(tiny_gguf, "tiny-gguf")
        stages = _stages(page, job)
    assert stages == [
        "Checking files: %p%",
        "Hashing: %p%",
        "Converting GGUF to safetensors: %p%",
        "Saving: %p%",
        "Hashing: %p%",
        "Verifying: %p%",
    ]
    with workspace.registry() as reg:
        model = reg.models.get("tiny-gguf")
    assert (model["format"], model["dtype"]) == ("gguf", "bfloat16")
    assert page.names() == ["tiny-gguf"]


@pytest.mark.parametrize("case", ["pickle", "missing", "not-a-model"])
def test_bad_sources_are_one_line_in_the_page(
    qtbot: QtBot, workspace: UnlockedWorkspace, tmp_path: Path, case: str
) -> None:
    if case == "pickle":
        source = tmp_path / "bad-model"
        source.mkdir()
        (source / "config.json").write_text('{"model_type": "llama"}')
        (source / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
        expected = "Import failed: refused "
    elif case == "missing":
        source = tmp_path / "nowhere"
        expected = f"Import failed: {source} does not exist; give a model folder or a .gguf file"
    else:
        source = tmp_path / "weights.safetensors"
        source.write_bytes(b"\0" * 64)
        expected = "Import failed: refused "
    page = _page(qtbot, workspace)
    with qtbot.waitSignal(page.start_import(source, "bad").done, timeout=WAIT_MS):
        pass
    text = page.status.text()
    assert text.startswith(expected)
    assert "\n" not in text
    assert "Traceback" not in text
    if case == "pickle":
        assert "pytorch_model.bin" in text
    assert page.names() == []
    assert page.import_folder_button.isEnabled()
    assert not page.cancel_button.isVisible()
    _nothing_left(workspace, "bad")
    _no_dialog()


@pytest.mark.slow
def test_first_start_prepares_the_demo_model(qtbot: QtBot, workspace: UnlockedWorkspace) -> None:
    window = MainWindow(workspace.ws.home, workspace=workspace)
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
    workspace = UnlockedWorkspace(vault)
    gone = subprocess.Popen(["true"])
    gone.wait()
    with workspace.registry() as reg:
        run_id = reg.runs.add(
            base_model="tiny", config={}, dataset="facts", state="running", pid=gone.pid
        )
    window = MainWindow(vault.ws.home, workspace=workspace)
    qtbot.addWidget(window)
    task = window.settle_runs()
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=30_000):
        pass
    assert task.error is None
    with workspace.registry() as reg:
        run = reg.runs.get(run_id)
    assert (run["state"], run["failure_reason"]) == ("failed", "process lost")
    assert run_id in window.statusBar().currentMessage()
