"""Lock now and auto-lock of the main window over a real workspace."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from appliance import datasets
from appliance.folders import sidecar_path
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import Workspace
from gui.main_window import MainWindow
from gui.window_lock import WindowLock

ORGFACTS = Path(__file__).resolve().parents[1] / "data" / "orgfacts" / "orgfacts.jsonl"
PASSPHRASE = "lock test passphrase"
WAIT_MS = 60_000


@pytest.fixture
def workspace(ws: Workspace) -> UnlockedWorkspace:
    workspace = UnlockedWorkspace(Vault.create(ws, PASSPHRASE, "alice", target_s=0))
    with workspace.registry() as reg:
        datasets.import_file(workspace.vault, reg, ORGFACTS, "orgfacts")
    return workspace


def _window(qtbot: QtBot, workspace: UnlockedWorkspace) -> tuple[MainWindow, WindowLock]:
    window = MainWindow(workspace.ws.home, workspace=workspace)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    assert window.locker is not None
    page = window.datasets_page
    qtbot.waitUntil(lambda: page.rows_view.rows.rowCount() > 0, timeout=WAIT_MS)
    return window, window.locker


def _assert_locked(window: MainWindow, locker: WindowLock, vault: Vault) -> None:
    """No key in memory, and nothing of the workspace's data in the widgets."""
    assert locker.workspace.locked
    assert vault.locked
    assert vault._key is None
    page = window.datasets_page
    assert page.rows_view.rows.rowCount() == 0
    assert page.tree.topLevelItemCount() == 0
    assert page.versions == []
    assert all(label.text() == "" for label in page.detail_labels.values())
    assert page.tokens.histogram.stats is None
    assert window.settings_page.slots_table.rowCount() == 0
    assert locker.stack.currentWidget() is locker.screen
    assert window.lock_label.text() == "Offline · locked"
    assert not locker.action.isEnabled()


def _unlock(qtbot: QtBot, locker: WindowLock, passphrase: str) -> None:
    locker.screen.passphrase.setText(passphrase)
    locker.screen.submit()
    task = locker.screen.task
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        pass


def test_lock_now_with_the_shortcut_then_unlock(qtbot: QtBot, workspace: UnlockedWorkspace) -> None:
    window, locker = _window(qtbot, workspace)
    vault = workspace.vault
    rows = window.datasets_page.rows_view
    dialog = rows.open_row(0)  # a full-text window open over the page
    assert dialog.isVisible()
    QTest.keyClick(window, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: workspace.locked, timeout=WAIT_MS)
    _assert_locked(window, locker, vault)
    # Closed: deleted already if the lock waited for a task (the event loop ran), else hidden.
    assert not shiboken6.isValid(dialog) or not dialog.isVisible()
    assert rows.dialog is None

    _unlock(qtbot, locker, "a wrong passphrase")
    assert locker.screen.error.text() == (
        f"wrong passphrase for workspace {workspace.ws.home}; try again, or ask a person with a "
        "key slot to add one for you (appliance passphrase add)"
    )
    assert workspace.locked
    assert locker.stack.currentWidget() is locker.screen

    with qtbot.waitSignal(locker.unlocked, timeout=WAIT_MS):
        _unlock(qtbot, locker, PASSPHRASE)
    assert not workspace.locked
    assert workspace.vault is not vault  # a new key buffer; the old one stays wiped
    assert vault._key is None
    assert locker.stack.currentWidget() is locker.content
    assert window.lock_label.text() == "Offline · unlocked as alice"
    qtbot.waitUntil(lambda: window.datasets_page.rows_view.rows.rowCount() > 0, timeout=WAIT_MS)
    assert window.datasets_page.names() == ["orgfacts"]
    assert locker.action.isEnabled()


def test_auto_lock_after_idle_time_but_not_while_typing(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    window, locker = _window(qtbot, workspace)
    vault = workspace.vault
    locker.idle.set_timeout_ms(600)
    # Input keeps it awake: a key every 150 ms for over twice the idle time.
    end = time.monotonic() + 1.4
    while time.monotonic() < end:
        QTest.keyClick(window.datasets_page.tree, Qt.Key.Key_Down)
        qtbot.wait(150)
    assert not workspace.locked
    with qtbot.waitSignal(locker.key_dropped, timeout=5000):
        pass
    _assert_locked(window, locker, vault)
    with qtbot.waitSignal(locker.unlocked, timeout=WAIT_MS):
        _unlock(qtbot, locker, PASSPHRASE)
    assert locker.idle.active  # counting again after the unlock
    locker.set_minutes(0)  # 0 disables it
    assert not locker.idle.active
    qtbot.wait(800)
    assert not workspace.locked


def test_the_auto_lock_setting_comes_from_the_workspace(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    (workspace.ws.home / "settings.json").write_text(json.dumps({"auto_lock_minutes": 3}))
    window, locker = _window(qtbot, workspace)
    assert locker.idle.timeout_ms == 3 * 60_000
    window.settings_page.auto_lock.setValue(7)
    assert locker.idle.timeout_ms == 7 * 60_000
    assert json.loads((workspace.ws.home / "settings.json").read_text())["auto_lock_minutes"] == 7


def test_a_lock_during_an_import_waits_for_it_before_the_key_goes(
    qtbot: QtBot, workspace: UnlockedWorkspace, tmp_path: Path
) -> None:
    path = tmp_path / "large.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(60_000):
            handle.write(json.dumps({"text": f"document {i} " + "lorem ipsum " * 20}) + "\n")
    window, locker = _window(qtbot, workspace)
    vault = workspace.vault
    page = window.datasets_page
    wizard = page.open_wizard(path)
    assert wizard is not None
    qtbot.waitUntil(lambda: wizard.preview is not None, timeout=WAIT_MS)
    wizard.name_edit.setText("large")
    task = wizard.store()
    assert task is not None
    qtbot.waitUntil(lambda: wizard.progress.format().startswith("Encrypting"), timeout=WAIT_MS)
    with qtbot.waitSignal(locker.key_dropped, timeout=WAIT_MS):
        window.lock_now()
        assert not wizard.isVisible()
        assert wizard.rows_view.rows.rowCount() == 0
        assert wizard.preview is None
    assert not task.running
    _assert_locked(window, locker, vault)
    # The store was cancelled (nothing kept) or had passed its last check (a whole version):
    # never half of one, and never written with a wiped key.
    assert list(workspace.ws.tmp_dir.iterdir()) == []
    fresh = Vault.unlock(workspace.ws, PASSPHRASE)
    with UnlockedWorkspace(fresh).registry() as reg:
        versions = reg.datasets.versions(include_deleted=True)
    assert [v["name"] for v in versions] in (["large", "orgfacts"], ["orgfacts"])
    # Each version's encrypted file and the metadata file beside it, nothing else.
    assert sorted(p.name for p in workspace.ws.datasets_dir.iterdir()) == sorted(
        name
        for v in versions
        for name in (Path(v["path"]).name, sidecar_path(Path(v["path"])).name)
    )
    for version in versions:
        assert datasets.load_rows(fresh, version)  # authenticated against the registry's sha256
