"""Following another process's files and its exit, woken by the kernel rather than a timer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from gui.follow import FileFollower, ProcessWatch

RUN = "run-20260101-000000-abcdef"


def test_appends_arrive_as_they_are_written(qtbot: QtBot, tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"old line\n")
    follower = FileFollower(path, offset=len(b"old line\n"))
    got: list[bytes] = []
    follower.appended.connect(got.append)
    follower.start()
    assert got == []  # nothing beyond the offset yet
    for chunk in (b"first\n", b"second, in two", b" parts\n"):
        with qtbot.waitSignal(follower.appended, timeout=10_000), open(path, "ab") as handle:
            handle.write(chunk)
    assert b"".join(got) == b"first\nsecond, in two parts\n"
    assert follower.offset == path.stat().st_size
    follower.stop()


def test_a_file_that_appears_later_is_followed(qtbot: QtBot, tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    follower = FileFollower(path)
    follower.start()
    with qtbot.waitSignal(follower.appended, timeout=10_000) as blocker:
        path.write_bytes(b"hello\n")
    assert blocker.args == [b"hello\n"]
    with (
        qtbot.waitSignal(follower.appended, timeout=10_000) as blocker,
        open(path, "ab") as handle,
    ):
        handle.write(b"again\n")
    assert blocker.args == [b"again\n"]


@pytest.mark.usefixtures("qtbot")  # a QApplication for the follower's QObject
def test_read_all_catches_up_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"x" * (3 * 1024 * 1024 + 5))
    follower = FileFollower(path)
    got: list[bytes] = []
    follower.appended.connect(got.append)
    follower._active = True
    follower.read_all()
    assert sum(map(len, got)) == path.stat().st_size
    assert len(got) == 4


def test_the_exit_of_a_process_that_is_not_our_child_is_seen(qtbot: QtBot) -> None:
    code = "import time  # appliance.training.worker\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, RUN])
    watch = ProcessWatch(proc.pid, RUN)
    watch.start()
    with qtbot.waitSignal(watch.exited, timeout=20_000):
        proc.kill()
    proc.wait()


def test_a_pid_that_is_not_the_runs_worker_counts_as_ended(qtbot: QtBot) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watch = ProcessWatch(proc.pid, RUN)
        with qtbot.waitSignal(watch.exited, timeout=5_000):
            watch.start()
    finally:
        proc.kill()
        proc.wait()
