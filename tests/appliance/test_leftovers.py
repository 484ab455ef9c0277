"""Leftovers of killed commands: named after their writer, removed by the next writer once
that writer is gone, reported by verify; unknown files are reported and never removed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import leftovers
from appliance.fsutil import TEMP_RE, atomic_writer, temp_name, temp_owner
from appliance.registry import Registry
from appliance.verify import verify_workspace
from appliance.workspace import Workspace
from tests.helpers.cli import CliRunner


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The PID of a process that has exited (and was reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(proc.stdout)
    assert not leftovers.pid_alive(pid)
    return pid


@pytest.fixture
def live() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_temporary_names_carry_the_writers_pid(tmp_path: Path) -> None:
    name = temp_name("import-model")
    assert temp_owner(name) == os.getpid()
    assert TEMP_RE.search(name)
    assert temp_owner("registry.sqlite.rebuild.pid42-0a1b2c3d.tmp-wal") == 42
    assert temp_owner("model.safetensors") is None
    target = tmp_path / "data.enc"
    with atomic_writer(target) as handle:
        handle.write(b"x")
        [tmp] = [p for p in tmp_path.iterdir() if p.name != "data.enc"]
        assert temp_owner(tmp.name) == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == ["data.enc"]


def _plant(ws: Workspace, dead: int, live: int) -> dict[str, Path]:
    """Temporaries of every kind, and files that are not ours."""
    made = {
        "dead_cipher": ws.datasets_dir / f".abc.enc.pid{dead}-k3j4h5g6.tmp",
        "dead_import": ws.tmp_dir / f"import-big.pid{dead}-0a0b0c0d.tmp",
        "legacy_cipher": ws.datasets_dir / ".abc.enc.k3j4h5g6.tmp",
        "legacy_import": ws.tmp_dir / "import-big-0badc0de",
        "live_cipher": ws.datasets_dir / f".def.enc.pid{live}-zzzz1111.tmp",
        "own": ws.keys_dir / f".alice.slot.pid{os.getpid()}-aaaa1111.tmp",
        "run_legacy": ws.runs_dir / "run-1" / ".session.json.k3j4h5g6.tmp",
        "run_dead": ws.runs_dir / "run-1" / f".session.json.pid{dead}-k3j4h5g6.tmp",
        "foreign_tmp": ws.tmp_dir / "notes.txt",
        "foreign_enc": ws.datasets_dir / "deadbeefdeadbeefdeadbeefdeadbeef.enc",
    }
    for key, path in made.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if "import" in key:
            (path / "files").mkdir(parents=True)
            (path / "files" / "model.safetensors").write_bytes(b"\0" * 4096)
        else:
            path.write_bytes(b"\0" * 2048)
    return made


def test_next_writer_removes_only_leftovers_of_dead_writers(
    ws: Workspace, dead_pid: int, live: int
) -> None:
    made = _plant(ws, dead_pid, live)
    with ws.writer("test"):
        pass
    gone = {k for k, p in made.items() if not p.exists()}
    # Dead PIDs anywhere; names from before PIDs only where every writer holds the lock.
    assert gone == {"dead_cipher", "dead_import", "legacy_cipher", "legacy_import", "run_dead"}


def test_verify_reports_leftovers_and_unknown_files(
    ws: Workspace, dead_pid: int, live: int
) -> None:
    made = _plant(ws, dead_pid, live)
    with Registry.open(ws, readonly=True) as reg:
        report = verify_workspace(ws, reg)
    section = report.sections[-1]
    assert section.findings == [
        "unknown file datasets/deadbeefdeadbeefdeadbeefdeadbeef.enc: an encrypted file no "
        "dataset version refers to (left in place)",
        "unknown file runs/run-1: not a run folder the registry knows (left in place)",
        "unknown file tmp/notes.txt: not a temporary file of the appliance (left in place)",
    ]
    warnings = "\n".join(section.warnings)
    assert (
        f"tmp/import-big.pid{dead_pid}-0a0b0c0d.tmp (4.0 KiB): leftover of process "
        f"{dead_pid}, which is gone; the next command that changes the workspace removes it"
    ) in warnings
    assert f"in use by running process {live}" in warnings
    assert "datasets/.abc.enc.k3j4h5g6.tmp (2.0 KiB): leftover of a command that was killed" in (
        warnings
    )
    assert (
        "runs/run-1/.session.json.k3j4h5g6.tmp (2.0 KiB): leftover of an unknown process; kept"
        in (warnings)
    )
    assert all(p.exists() for p in made.values())  # verify only reads


def test_killed_cli_writer_leftover_is_cleared_by_the_next_cli_writer(
    ws: Workspace, cli: CliRunner, dead_pid: int
) -> None:
    leftover = ws.datasets_dir / f".x.enc.pid{dead_pid}-abcdefgh.tmp"
    leftover.write_bytes(b"\0" * 17_000)
    foreign = ws.datasets_dir / "0123456789abcdef0123456789abcdef.enc"
    foreign.write_bytes(b"not ours")
    reported = cli("verify")
    assert reported.returncode == 1
    assert f"datasets/.x.enc.pid{dead_pid}-abcdefgh.tmp (16.6 KiB): leftover of process" in (
        reported.stdout
    )
    assert "FAIL unknown file datasets/0123456789abcdef0123456789abcdef.enc" in reported.stdout
    # A writer (it takes the lock first), even one that fails afterwards.
    tagged = cli("adapter", "tag", "none@1", "x", "--remove")
    assert tagged.returncode == 1
    assert not leftover.exists()
    assert foreign.read_bytes() == b"not ours"
