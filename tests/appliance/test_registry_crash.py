"""Crash safety: a writer killed with SIGKILL at random moments never loses or tears a commit."""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import time

from appliance.registry import Registry
from appliance.workspace import Workspace
from tests.helpers.registry_data import add_fake_model

KILLS = 50


def _writer_loop(ws: Workspace, report_fd: int, start: int) -> None:
    """Child: one transaction per step (run + adapter + tag + audit); report after each commit."""
    with Registry.open(ws) as reg:
        step = start
        while True:
            run_id = f"run-{step}"
            with reg.transaction():
                reg.runs.add(base_model="base", config={"step": step}, run_id=run_id)
                reg.runs.update(run_id, state="finished")
                version = reg.adapters.add_version(
                    "a", run_id=run_id, path="adapters/blob", sha256="00" * 32
                )
                reg.tags.set(f"a@{version}", "latest-good")
                reg.audit("test.step", run_id, {"step": step})
            os.write(report_fd, f"{run_id} {version}\n".encode())
            step += 1


def _run_child_and_kill(ws: Workspace, start: int, delay: float) -> list[tuple[str, int]]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        os.close(read_fd)
        code = 0
        try:
            _writer_loop(ws, write_fd, start)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_fd)
    buffer = b""
    # Wait for the first commit (startup time varies with the machine's load), then kill at
    # a random moment of the write loop: before, during or between transactions.
    first_deadline = time.monotonic() + 20
    while b"\n" not in buffer and (left := first_deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([read_fd], [], [], left)
        if ready:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buffer += chunk
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    # Lines the child wrote before it died were committed before they were written.
    while chunk := os.read(read_fd, 65536):
        buffer += chunk
    os.close(read_fd)
    assert os.WIFSIGNALED(status), "the writer exited by itself (it failed)"
    reported = []
    for line in buffer.decode().splitlines():
        run_id, version = line.split()
        reported.append((run_id, int(version)))
    return reported


def test_sigkill_at_random_moments_never_loses_a_reported_commit(ws: Workspace) -> None:
    (ws.adapters_dir / "blob").write_bytes(b"weights")
    with Registry.open(ws) as reg:
        add_fake_model(reg)
    rng = random.Random(1234)
    committed: list[tuple[str, int]] = []
    started = time.monotonic()
    for kill in range(KILLS):
        # Each transaction takes a few ms with its fsyncs, so this lands anywhere in one.
        delay = rng.uniform(0.0, 0.02)
        committed += _run_child_and_kill(ws, start=kill * 100_000, delay=delay)

        conn = sqlite3.connect(ws.registry_path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        finally:
            conn.close()
        with Registry.open(ws) as reg:
            runs = {r["id"]: r for r in reg.runs.all()}
            adapters = {a["version"]: a for a in reg.adapters.versions("a")}
            for run_id, version in committed:
                assert runs[run_id]["state"] == "finished"
                assert adapters[version]["run_id"] == run_id
            # Atomicity: every run has its adapter and audit row, and the other way round.
            assert sorted(str(a["run_id"]) for a in adapters.values()) == sorted(runs)
            assert len(reg.audit_rows(action="test")) == len(runs)
            assert sorted(adapters) == list(range(1, len(adapters) + 1))
            if adapters:
                assert reg.adapters.version("a@latest-good")["version"] == max(adapters)
            assert reg.verify_audit().ok
    elapsed = time.monotonic() - started
    print(f"{KILLS} kills, {len(committed)} reported commits, {elapsed:.1f} s")
    assert len(committed) >= KILLS, f"only {len(committed)} commits were made; test too weak"
    assert elapsed < 60
