"""The main window over a real workspace, driven through its widgets with pytest-qt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PySide6.QtWidgets import QLabel
from pytestqt.qtbot import QtBot

from appliance.gpu import GpuReading, GpuState
from appliance.workspace import Workspace
from gui.app import has_display
from gui.main_window import MainWindow

PAGES = ["Datasets", "Models", "Train", "Playground", "Registry", "Export", "Settings"]


def _window(qtbot: QtBot, home: Path) -> MainWindow:
    window = MainWindow(home)
    qtbot.addWidget(window)
    window.show()
    return window


def test_navigation_lists_every_page_and_switches(qtbot: QtBot, ws: Workspace) -> None:
    window = _window(qtbot, ws.home)
    assert window.page_titles() == PAGES
    assert [window.nav.item(i).text() for i in range(window.nav.count())] == PAGES
    for row, title in enumerate(PAGES):
        window.nav.setCurrentRow(row)
        assert window.stack.currentWidget() is window.pages[row]
        assert window.pages[row].title == title


def test_status_bar_shows_gpu_state_from_the_monitor_thread(qtbot: QtBot, ws: Workspace) -> None:
    window = _window(qtbot, ws.home)
    with qtbot.waitSignal(window.monitor.updated, timeout=5000) as blocker:
        window.monitor.start()
    state = blocker.args[0]
    assert isinstance(state, GpuState)
    qtbot.waitUntil(lambda: window.gpu_label.text() != "GPU: reading…", timeout=2000)
    if state.available:
        assert "GPU0" in window.gpu_label.text()
    else:
        assert window.gpu_label.text() == "No NVIDIA GPU: training runs on the CPU"
        assert "NVML" in window.gpu_label.toolTip()
    # A second reading arrives about a second later: the monitor keeps polling.
    with qtbot.waitSignal(window.monitor.updated, timeout=3000):
        pass
    window.close()
    assert not window.monitor._thread.isRunning()


def test_gpu_label_renders_each_gpu(qtbot: QtBot, ws: Workspace) -> None:
    window = _window(qtbot, ws.home)
    gib = 1024**3
    state = GpuState(
        gpus=[
            GpuReading(0, "NVIDIA H200", 12 * gib, 141 * gib, 87, 61),
            GpuReading(1, "NVIDIA H200", 1 * gib, 141 * gib, None, None),
        ],
        driver_version="580.00",
    )
    window.gpu_label.show_state(state)
    assert window.gpu_label.text() == "GPU0 12.0 GiB / 141.0 GiB  |  GPU1 1.0 GiB / 141.0 GiB"
    assert "utilisation 87%" in window.gpu_label.toolTip()
    assert "Driver 580.00" in window.gpu_label.toolTip()


def test_settings_page_shows_the_workspace(qtbot: QtBot, ws: Workspace) -> None:
    window = _window(qtbot, ws.home)
    page = window.show_page("Settings")
    assert page.workspace_label.text() == str(ws.home)  # type: ignore[attr-defined]
    assert page.state_label.text().startswith("ready (format 1")  # type: ignore[attr-defined]
    assert page.egress_label.text().startswith("offline")  # type: ignore[attr-defined]


def test_window_shows_its_pages_and_status(qtbot: QtBot, ws: Workspace, tmp_path: Path) -> None:
    window = _window(qtbot, ws.home)
    qtbot.waitExposed(window)
    assert window.windowTitle() == f"Fine-tuning appliance — {ws.home}"
    assert window.nav.isVisible()
    assert window.nav.currentRow() == 0
    assert [window.nav.item(i).text() for i in range(window.nav.count())] == window.page_titles()
    assert all(not window.nav.item(i).icon().isNull() for i in range(window.nav.count()))
    shown = window.stack.currentWidget()
    assert shown is window.pages[0]
    assert shown.isVisible()
    for page in window.pages:
        # Every page opens with its title as the heading and a sentence on what it is for.
        heading = page.findChild(QLabel, "pageHeading")
        purpose = page.findChild(QLabel, "pagePurpose")
        assert heading is not None, page.title
        assert purpose is not None, page.title
        assert heading.text() == page.title
        assert purpose.text() == page.purpose
        assert purpose.text(), page.title
        assert heading.isVisible() == (page is shown)
    assert window.statusBar().isVisible()
    assert window.lock_label.isVisible()
    assert window.lock_label.text() == "Offline · locked"  # no workspace: nothing unlocked
    assert window.gpu_label.isVisible()
    assert window.gpu_label.text() == "GPU: reading…"  # the monitor has not read yet
    # The picture is for people (kept beside the test's other files); its size is the window's.
    image = window.grab().toImage()
    assert (image.width(), image.height()) == (window.width(), window.height())
    assert image.save(str(tmp_path / "main-window.png"))
    assert (tmp_path / "main-window.png").stat().st_size > 0


def test_no_display_prints_how_to_run_it() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gui"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "xvfb-run" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not has_display({})
    assert has_display({"DISPLAY": ":0"})
    assert has_display({"QT_QPA_PLATFORM": "offscreen"})


def test_status_bar_says_when_a_damaged_key_slot_was_skipped(qtbot: QtBot, ws: Workspace) -> None:
    from appliance.unlocked import UnlockedWorkspace
    from appliance.vault import Vault

    warning = "key slot 'alice' was skipped: key slot keys/alice.slot is damaged (not JSON)"
    vault = Vault(ws, b"k" * 32, "bob", (warning,))
    window = MainWindow(ws.home, workspace=UnlockedWorkspace(vault))
    qtbot.addWidget(window)
    assert window.lock_label.text() == "Offline · unlocked as bob · 1 damaged key slot(s) skipped"
    assert window.lock_label.toolTip() == warning
    clean = MainWindow(ws.home, workspace=UnlockedWorkspace(Vault(ws, b"k" * 32, "bob")))
    qtbot.addWidget(clean)
    assert clean.lock_label.text() == "Offline · unlocked as bob"
