"""The stand-in parent: reports the worker's PID, passes stop signals on, ends as the worker ends,
and when it is killed (a window closing) the worker trains on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.training import events as ev
from appliance.training.process import process_alive, signal_run
from appliance.training.standin import standin_command

RUN = "run-20260101-000000-abcdef"
# A fake worker: reads its key line, says it is ready, then waits; on SIGTERM it writes an event
# and exits 0 (what the real worker does after its checkpoint).
WORKER = (
    f"import json, signal, sys, time  # appliance.training.worker {RUN}\n"
    "keys = sys.stdin.readline()\n"
    "def stop(*_):\n"
    f"    print(json.dumps({{'type': 'stopped', 'run_id': '{RUN}', 'time': 1.0, 'step': 2}}),"
    " flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('log line from the worker', file=sys.stderr, flush=True)\n"
    f"print(json.dumps({{'type': 'eval', 'run_id': '{RUN}', 'time': 1.0, 'step': 0,"
    " 'eval_loss': float(len(keys))}), flush=True)\n"
    "time.sleep(60)\n"
)


def _start(tmp_path: Path, code: str = WORKER) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "train.log"
    command = standin_command([sys.executable, "-c", code, RUN], log, RUN)
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(b'{"keys": "secret"}\n')
    proc.stdin.close()
    return proc, log


def _events(proc: subprocess.Popen[bytes], count: int) -> list[ev.Event]:
    assert proc.stdout is not None
    reader = ev.reader("stand-in output")
    found: list[ev.Event] = []
    while len(found) < count:
        line = proc.stdout.readline()
        assert line, f"the stream ended after {found}"
        found += reader.feed(line)
    return found


def test_it_reports_the_worker_and_passes_a_stop_on(tmp_path: Path) -> None:
    proc, log = _start(tmp_path)
    spawned, evaluated = _events(proc, 2)
    assert isinstance(spawned, ev.Spawned)
    assert spawned.run_id == RUN
    worker = spawned.pid
    assert worker != proc.pid
    assert process_alive(worker, RUN)
    # The worker got the stand-in's stdin (the key line) and stdout (its events).
    assert isinstance(evaluated, ev.Eval)
    assert evaluated.eval_loss == len('{"keys": "secret"}\n')
    # In a process session of its own: a signal to the launcher's process group does not reach it.
    assert os.getsid(worker) == worker != os.getsid(0)

    proc.send_signal(signal.SIGTERM)  # what QProcess.terminate does
    (stopped,) = _events(proc, 1)
    assert isinstance(stopped, ev.Stopped)
    assert proc.wait(timeout=30) == 0
    assert "log line from the worker" in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600


def test_it_dies_as_the_worker_dies(tmp_path: Path) -> None:
    proc, _log = _start(tmp_path)
    spawned, _ = _events(proc, 2)
    assert isinstance(spawned, ev.Spawned)
    assert signal_run(spawned.pid, RUN, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not signal_run(spawned.pid, RUN, signal.SIGTERM)  # gone: nothing to signal


def test_the_worker_trains_on_when_the_stand_in_is_killed(tmp_path: Path) -> None:
    proc, _log = _start(tmp_path)
    spawned, _ = _events(proc, 2)
    assert isinstance(spawned, ev.Spawned)
    proc.kill()  # QProcess kills its child when the window closes
    proc.wait(timeout=30)
    time.sleep(0.2)
    assert process_alive(spawned.pid, RUN)
    assert signal_run(spawned.pid, RUN, signal.SIGKILL)


def test_a_worker_that_cannot_start_is_one_line_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    command = standin_command([str(tmp_path / "no-such-program")], log, RUN)
    done = subprocess.run(command, capture_output=True, check=False, timeout=60)
    assert done.returncode == 1
    assert done.stdout == b""
    assert "the training process could not be started" in log.read_text()


def test_signal_run_refuses_a_pid_that_is_not_the_runs_worker() -> None:
    assert not signal_run(os.getpid(), RUN, 0)
    assert not signal_run(None, RUN, signal.SIGTERM)


@pytest.mark.parametrize("code", [3, 0])
def test_its_exit_code_is_the_workers(tmp_path: Path, code: int) -> None:
    script = f"import sys  # appliance.training.worker\nsys.exit({code})\n"
    proc, _log = _start(tmp_path, script)
    assert proc.wait(timeout=30) == code
