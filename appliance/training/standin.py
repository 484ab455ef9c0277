"""A stand-in parent for the training worker, for launchers that kill their child when they go.

``python -m appliance.training.standin --log LOG --run-id ID -- WORKER COMMAND...``

The desktop app starts children through QProcess, which kills its child when it is destroyed,
that is when the window closes. A run must be able to outlive the window ("keep training in the
background"), as a run started by ``appliance train`` outlives its terminal. So the app starts
this stand-in, which:

1. starts the worker in a session of its own (no signal aimed at the app's process group reaches
   it), handing it this process's stdin (the key line, which the stand-in never reads) and stdout
   (the event stream), with its stderr appended to the run's ``train.log`` as the CLI does;
2. writes a :class:`~appliance.training.events.Spawned` event with the worker's PID on stdout,
   so that the parent records the PID of the process that trains (:func:`runs.mark_started`);
3. passes SIGTERM and SIGINT on to the worker (a graceful stop), and ends as the worker ends:
   with its exit code, or killed by the same signal, so the parent sees the worker's fate.

Killing the stand-in (what QProcess does on exit) leaves the worker training: its events go on to
``metrics.jsonl`` and its log to ``train.log``, from which the app re-attaches the run at its
next start and any command settles it. No torch here; this process stays a few MB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from appliance import offline
from appliance.fsutil import open_append
from appliance.training import events as ev

MODULE = "appliance.training.standin"


def standin_command(command: Sequence[str], log_file: Path, run_id: str) -> list[str]:
    """The stand-in's command line around the worker's ``command``."""
    return [
        sys.executable,
        "-m",
        MODULE,
        "--log",
        str(log_file),
        "--run-id",
        run_id,
        "--",
        *command,
    ]


def main(argv: list[str] | None = None) -> int:
    """Start the worker, report its PID, pass stop signals on, and end as it ends."""
    offline.enforce()
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--log", type=Path, required=True, help="file the worker's stderr goes to")
    parser.add_argument("--run-id", required=True, help="the run, named in the spawned event")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the worker's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no worker command after --")
    log_fd = open_append(args.log)
    try:
        worker = subprocess.Popen(command, stderr=log_fd, start_new_session=True, close_fds=True)
    except OSError as exc:
        os.write(log_fd, f"the training process could not be started: {exc}\n".encode())
        return 1
    finally:
        os.close(log_fd)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if worker.poll() is None:
            worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        sys.stdout.write(ev.Spawned(run_id=args.run_id, pid=worker.pid).to_json() + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass  # the parent is gone already; the worker trains on all the same
    # The worker holds the pipes now; this process keeps no copy that could outlive it.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    code = worker.wait()
    if code < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())
