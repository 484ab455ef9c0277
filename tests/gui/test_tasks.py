"""Background tasks report progress, results and one-line errors on the GUI thread."""

from __future__ import annotations

import threading

from PySide6.QtCore import QObject
from pytestqt.qtbot import QtBot

from appliance.errors import DatasetError
from appliance.progress import Progress
from gui.tasks import Task


def test_success_reports_progress_then_result_off_the_gui_thread(qtbot: QtBot) -> None:
    owner = QObject()
    gui_thread = threading.get_ident()
    seen: list[tuple[int, int, str]] = []

    def work(progress: Progress) -> int:
        assert threading.get_ident() != gui_thread
        for i in range(3):
            progress(i + 1, 3, "counting")
        return 42

    task = Task("count", work, owner)
    results: list[object] = []
    task.progress.connect(lambda d, t, s: seen.append((d, t, s)))
    task.succeeded.connect(results.append)
    with qtbot.waitSignals([task.succeeded, task.done], order="strict", timeout=5000):
        task.start()
    assert results == [42]
    assert seen == [(1, 3, "counting"), (2, 3, "counting"), (3, 3, "counting")]
    assert not task.running
    assert task.result == 42


def test_appliance_error_becomes_its_message(qtbot: QtBot) -> None:
    def work(_progress: Progress) -> None:
        raise DatasetError("data.jsonl line 3: bad JSON; fix the line and import again")

    task = Task("import", work)
    with qtbot.waitSignal(task.failed, timeout=5000) as blocker:
        task.start()
    assert blocker.args == ["data.jsonl line 3: bad JSON; fix the line and import again"]


def test_unexpected_error_is_one_line(qtbot: QtBot) -> None:
    def work(_progress: Progress) -> None:
        raise ZeroDivisionError("division by zero")

    task = Task("estimate", work)
    with qtbot.waitSignal(task.failed, timeout=5000) as blocker:
        task.start()
    assert blocker.args == ["internal error in estimate: ZeroDivisionError: division by zero"]
    assert task.error == blocker.args[0]
