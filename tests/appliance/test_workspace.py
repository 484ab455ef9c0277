"""The workspace: layout, permissions, format version, single-writer lock."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance import workspace
from appliance.errors import WorkspaceError, WorkspaceLockedError
from tests.helpers.cli import CliRunner


def test_init_creates_private_layout(home: Path) -> None:
    ws, created = workspace.init(home)
    assert created
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert sorted(p.name for p in home.iterdir()) == sorted([*workspace.SUBFOLDERS, "FORMAT"])
    for name in workspace.SUBFOLDERS:
        assert (home / name).is_dir()
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o700
    info = json.loads((home / "FORMAT").read_text())
    assert info["format"] == workspace.FORMAT_VERSION
    assert stat.S_IMODE((home / "FORMAT").stat().st_mode) == 0o600
    assert ws.home == home


def test_init_twice_keeps_the_workspace(ws: workspace.Workspace) -> None:
    marker = ws.datasets_dir / "keep"
    marker.write_text("x")
    again, created = workspace.init(ws.home)
    assert not created
    assert again.home == ws.home
    assert marker.exists()


def test_open_missing_workspace_says_run_init(home: Path) -> None:
    with pytest.raises(WorkspaceError, match="appliance init"):
        workspace.open_workspace(home)


def test_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a folder")
    with pytest.raises(WorkspaceError, match="is a file, not a folder"):
        workspace.init(target)
    assert target.read_text() == "not a folder"


def test_home_under_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(WorkspaceError, match="is a file"):
        workspace.init(target / "ws")


def test_non_empty_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "somebody-elses.txt").write_text("x")
    with pytest.raises(WorkspaceError, match="not empty"):
        workspace.init(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somebody-elses.txt"]


def test_folder_whose_subfolders_hold_files_is_refused(tmp_path: Path) -> None:
    # A failed init removes the subfolders it finds; one named like ours but holding the
    # user's files must stop the init before anything is created.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "my-model.safetensors").write_text("weights")
    (tmp_path / "keys").mkdir()
    with pytest.raises(WorkspaceError, match="not empty and is not a workspace"):
        workspace.init(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "keys",
        "models",
        "models/my-model.safetensors",
    ]


def test_an_interrupted_init_of_an_earlier_version_is_finished(tmp_path: Path) -> None:
    # Earlier versions also made exports/ and logs/: left empty by an interrupted init, they
    # do not make the folder foreign.
    for name in ("keys", "exports", "logs"):
        (tmp_path / name).mkdir()
    _, created = workspace.init(tmp_path)
    assert created
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*workspace.SUBFOLDERS, "exports", "logs", "FORMAT"]
    )


def test_discarding_a_new_workspace_keeps_what_is_not_ours(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()  # left by an interrupted init: empty, so accepted
    ws, created = workspace.init(tmp_path)
    assert created
    (tmp_path / "arrived-meanwhile.txt").write_text("a file the user saved there")
    workspace.discard_new(ws.home, existed_before=True)
    assert [p.name for p in tmp_path.iterdir()] == ["arrived-meanwhile.txt"]


def test_workspace_from_newer_version_is_refused(ws: workspace.Workspace) -> None:
    (ws.home / "FORMAT").write_text(json.dumps({"format": workspace.FORMAT_VERSION + 1}))
    with pytest.raises(WorkspaceError, match="newer appliance"):
        workspace.open_workspace(ws.home)
    with pytest.raises(WorkspaceError, match="newer appliance"):
        workspace.init(ws.home)


def test_damaged_format_file_is_reported(ws: workspace.Workspace) -> None:
    (ws.home / "FORMAT").write_text("{not json")
    with pytest.raises(WorkspaceError, match="damaged"):
        workspace.open_workspace(ws.home)


def test_failed_init_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "a" / "b"

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workspace, "atomic_write_bytes", refuse)
    with pytest.raises(WorkspaceError, match="No space left"):
        workspace.init(home)
    assert list(tmp_path.iterdir()) == []


def test_empty_appliance_home_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_HOME", "  ")
    with pytest.raises(WorkspaceError, match="APPLIANCE_HOME is set but empty"):
        workspace.default_home()


def test_default_home_is_user_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("APPLIANCE_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert workspace.default_home() == tmp_path / "finetune-appliance"


@contextmanager
def _lock_holder(home: Path, command: str) -> Iterator[subprocess.Popen[str]]:
    """A child that holds the writer lock until it reads a line on stdin, reaped on exit.

    It prints "locked" once it holds the lock and "released" once the lock is free again; one
    still running when the block ends is killed.
    """
    code = textwrap.dedent(
        f"""
        import sys
        from appliance.workspace import open_workspace
        with open_workspace({str(home)!r}).writer({command!r}):
            print("locked", flush=True)
            sys.stdin.readline()
        print("released", flush=True)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "locked"
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def test_second_writer_is_told_who_holds_the_lock(ws: workspace.Workspace) -> None:
    with _lock_holder(ws.home, "dataset import legal.jsonl") as holder:
        started = time.monotonic()
        with pytest.raises(WorkspaceLockedError) as info, ws.writer("model import", wait_s=0.3):
            pass
        assert time.monotonic() - started >= 0.3
        assert f"PID {holder.pid} (dataset import legal.jsonl)" in str(info.value)
        assert holder.poll() is None  # refused while the holder still held the lock


def test_lock_of_a_killed_process_is_recovered(ws: workspace.Workspace) -> None:
    with _lock_holder(ws.home, "train") as holder:
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait() == -signal.SIGKILL
        # The stale "PID command" text is still in the file; the kernel released the flock.
        assert ws.lock_path.read_text() == f"{holder.pid} train\n"
        with ws.writer("model import", wait_s=0.5):
            assert ws.lock_path.read_text() == f"{os.getpid()} model import\n"
        assert ws.lock_path.read_text() == ""


def test_writer_waits_for_a_short_writer(
    ws: workspace.Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    with _lock_holder(ws.home, "short") as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        stdin, stdout = holder.stdin, holder.stdout
        real_sleep = time.sleep

        def sleep(seconds: float) -> None:
            # The writer sleeps only between attempts on a taken lock, so its first sleep shows
            # that it found the lock taken and waited; only then is the holder told to finish.
            if not events:
                events.append("waiting")
                stdin.write("done\n")
                stdin.flush()
                events.append(stdout.readline().strip())
            real_sleep(seconds)

        monkeypatch.setattr(
            workspace, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep)
        )
        with ws.writer("patient", wait_s=10):
            events.append("acquired")
            assert ws.lock_path.read_text() == f"{os.getpid()} patient\n"
        assert holder.wait(timeout=30) == 0  # it finished by itself, after releasing the lock
    assert events == ["waiting", "released", "acquired"]


def test_second_cli_writer_gets_one_clear_line(
    ws: workspace.Workspace, cli: CliRunner, tiny_llama: Path
) -> None:
    with _lock_holder(ws.home, "train --adapter legal") as holder:
        result = cli("model", "import", str(tiny_llama), "--name", "tiny")
        assert holder.poll() is None  # it held the lock all along
    assert result.returncode == 1
    assert result.err_lines == [
        f"error: workspace {ws.home} is in use by PID {holder.pid} (train --adapter legal); "
        "wait for it to finish or stop it, then try again"
    ]
    assert not (ws.models_dir / "tiny").exists()
