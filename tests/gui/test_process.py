"""The QProcess wrapper against real children: the selftest job and plain Python programs."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pytestqt.qtbot import QtBot

from appliance.jobs import JobRequest, job_reader
from gui.process import STDERR_TAIL_LINES, ChildOutcome, ChildProcess, JobProcess

WAIT_MS = 60_000


class Recorder:
    """Everything a JobProcess said, in order."""

    def __init__(self, job: JobProcess) -> None:
        self.signals: list[tuple[str, Any]] = []
        job.progress.connect(lambda d, t, s: self.signals.append(("progress", (d, t, s))))
        job.output.connect(lambda data: self.signals.append(("output", data)))
        job.succeeded.connect(lambda data: self.signals.append(("succeeded", data)))
        job.failed.connect(lambda message: self.signals.append(("failed", message)))
        job.done.connect(lambda: self.signals.append(("done", None)))

    def names(self) -> list[str]:
        return [name for name, _ in self.signals]

    def last(self, name: str) -> Any:
        return [value for n, value in self.signals if n == name][-1]


def _run(qtbot: QtBot, job: JobProcess) -> Recorder:
    seen = Recorder(job)
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        job.start()
    return seen


def test_progress_in_order_then_result(qtbot: QtBot, tmp_path: Path) -> None:
    job = JobProcess(JobRequest("selftest-echo", tmp_path, {"steps": 4}))
    seen = _run(qtbot, job)
    assert seen.names() == ["progress"] * 4 + ["succeeded", "done"]
    assert [v for n, v in seen.signals if n == "progress"] == [
        (1, 4, "step 1"),
        (2, 4, "step 2"),
        (3, 4, "step 3"),
        (4, 4, "step 4"),
    ]
    assert seen.last("succeeded")["steps"] == 4
    assert job.outcome is not None
    assert job.outcome.exit_code == 0
    assert job.outcome.final_event
    assert not job.running


def test_failure_is_the_jobs_one_line(qtbot: QtBot, tmp_path: Path) -> None:
    job = JobProcess(JobRequest("selftest-echo", tmp_path, {"fail": "no such model 'x'"}))
    seen = _run(qtbot, job)
    assert seen.names()[-2:] == ["failed", "done"]
    assert "succeeded" not in seen.names()
    assert seen.last("failed") == "no such model 'x'"
    assert job.outcome is not None
    assert job.outcome.exit_code == 1


def test_internal_error_is_one_line_with_the_traceback_on_the_log(
    qtbot: QtBot, tmp_path: Path
) -> None:
    log = tmp_path / "logs" / "job.log"
    job = JobProcess(JobRequest("selftest-echo", tmp_path, {"internal": True}), log_path=log)
    lines: list[str] = []
    job.child.stderr_line.connect(lines.append)
    seen = _run(qtbot, job)
    assert seen.last("failed") == (
        "internal error in selftest-echo: RuntimeError: planted internal error"
    )
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: planted internal error"
    assert log.read_text().splitlines() == lines


def test_garbage_on_stdout_is_reported_and_reading_goes_on(qtbot: QtBot, tmp_path: Path) -> None:
    job = JobProcess(JobRequest("selftest-echo", tmp_path, {"garbage": "Loading 100%|#####|"}))
    bad: list[str] = []
    job.child.bad_line.connect(bad.append)
    seen = _run(qtbot, job)
    assert bad == ["selftest-echo output line 1: not valid JSON (Expecting value at column 1)"]
    assert seen.names() == ["progress"] * 3 + ["succeeded", "done"]
    assert job.outcome is not None
    assert job.outcome.bad_lines == bad


def test_a_silent_child_is_reported_hung_then_killed(qtbot: QtBot, tmp_path: Path) -> None:
    request = JobRequest(
        "selftest-echo", tmp_path, {"steps": 1, "noise": "loading shard 3 of 8", "silent_s": 60}
    )
    job = JobProcess(request, hang_s=0.5)
    seen = Recorder(job)
    started = time.monotonic()
    with qtbot.waitSignal(job.progress, timeout=WAIT_MS):
        job.start()
    with qtbot.waitSignal(job.hung, timeout=WAIT_MS) as hung:
        pass  # 0.5 s after the last event
    assert hung.args == [
        "the selftest-echo job has sent no progress for 0.5 s; its last lines: loading shard 3 of 8"
    ]
    assert job.running
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        job.kill()
    assert time.monotonic() - started < 30
    assert seen.names()[-3:] == ["progress", "failed", "done"]
    assert seen.last("failed") == (
        "the selftest-echo process was killed from the desktop app; its last words: "
        "loading shard 3 of 8"
    )
    assert job.outcome is not None
    assert (job.outcome.exit_code, job.outcome.signal) == (-signal.SIGKILL, signal.SIGKILL)
    assert job.outcome.hung
    assert job.outcome.stopped == "killed"


def test_a_child_that_speaks_again_is_resumed(qtbot: QtBot, tmp_path: Path) -> None:
    job = JobProcess(
        JobRequest("selftest-echo", tmp_path, {"steps": 2, "delay_s": 1.5}), hang_s=0.5
    )
    seen = Recorder(job)
    job.hung.connect(lambda message: seen.signals.append(("hung", message)))
    job.resumed.connect(lambda: seen.signals.append(("resumed", None)))
    with qtbot.waitSignal(job.progress, timeout=WAIT_MS):
        job.start()
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        pass
    after_first = seen.names()[seen.names().index("progress") :]
    assert after_first == ["progress", "hung", "resumed", "progress", "succeeded", "done"]
    assert job.outcome is not None
    assert job.outcome.hung


def test_events_keep_the_watchdog_quiet(qtbot: QtBot, tmp_path: Path) -> None:
    # Events 0.3 s apart against a 1 s watchdog: never hung, though the job takes ~2 s after its
    # first event (the start of the interpreter, before it, can be slow on a busy machine).
    job = JobProcess(
        JobRequest("selftest-echo", tmp_path, {"steps": 7, "delay_s": 0.3}), hang_s=1.0
    )
    seen = Recorder(job)
    with qtbot.waitSignal(job.progress, timeout=WAIT_MS):
        job.start()
    hung: list[str] = []
    job.hung.connect(hung.append)
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        pass
    assert seen.names() == ["progress"] * 7 + ["succeeded", "done"]
    assert hung == []


def test_a_child_killed_by_someone_else_fails_with_its_last_lines(
    qtbot: QtBot, tmp_path: Path
) -> None:
    request = JobRequest(
        "selftest-echo", tmp_path, {"steps": 1, "noise": "allocating 9 GiB", "silent_s": 60}
    )
    job = JobProcess(request)
    seen = Recorder(job)
    with qtbot.waitSignal(job.progress, timeout=WAIT_MS):
        job.start()
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        os.kill(job.child.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    assert seen.names() == ["progress", "failed", "done"]
    assert seen.last("failed") == (
        "the selftest-echo process was killed by SIGKILL; the system may have run out of "
        "memory; its last words: allocating 9 GiB"
    )
    assert job.outcome is not None
    assert not job.outcome.final_event
    assert job.outcome.stopped == ""


def test_an_exit_without_a_final_event_is_a_failure(qtbot: QtBot) -> None:
    child = ChildProcess("worker", job_reader(), is_final=lambda e: e.type == "result")
    code = "import sys; sys.stderr.write('segfault in libfoo\\n'); sys.exit(3)"
    with qtbot.waitSignal(child.ended, timeout=WAIT_MS) as ended:
        child.start([sys.executable, "-c", code])
    outcome = ended.args[0]
    assert isinstance(outcome, ChildOutcome)
    assert (outcome.exit_code, outcome.crashed, outcome.final_event) == (3, False, False)
    assert outcome.stderr_tail == ["segfault in libfoo"]


def test_cancel_stops_the_job_which_reports_cancelled(qtbot: QtBot, tmp_path: Path) -> None:
    job = JobProcess(JobRequest("selftest-echo", tmp_path, {"steps": 1, "silent_s": 60}))
    seen = Recorder(job)
    with qtbot.waitSignal(job.progress, timeout=WAIT_MS):
        job.start()
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        job.cancel()
    assert seen.names() == ["progress", "failed", "done"]
    assert seen.last("failed") == "cancelled"
    assert job.cancelled
    assert job.outcome is not None
    assert job.outcome.exit_code == 130  # it reported, not killed after the grace period
    assert job.outcome.stopped == "terminated"
    assert job.failure is not None
    assert job.failure.kind == "cancelled"


def test_end_cancels_and_waits_then_kills_what_does_not_stop(qtbot: QtBot, tmp_path: Path) -> None:
    """What a closing window calls: a job that honours the cancel ends cleanly within the wait;
    one that does not is killed."""
    job = JobProcess(JobRequest("selftest-echo", tmp_path, {"steps": 1, "silent_s": 60}))
    with qtbot.waitSignal(job.progress, timeout=WAIT_MS):
        job.start()
    job.end(5.0)
    assert not job.running
    assert job.outcome is not None
    assert job.outcome.exit_code == 130  # it reported cancelled, no kill was needed
    job.end(5.0)  # an ended job: nothing to do

    # Past its point of no return a job ignores the cancel (it finishes instead): after the
    # wait it is killed, so nothing outlives the window.
    late = JobProcess(
        JobRequest("selftest-echo", tmp_path, {"no_return": True, "steps": 1, "silent_s": 60})
    )
    with qtbot.waitSignal(late.progress, timeout=WAIT_MS):
        late.start()
    late.end(0.5)
    assert not late.running
    assert late.outcome is not None
    assert late.outcome.signal == signal.SIGKILL


def test_interactive_commands_are_answered_as_they_are_sent(qtbot: QtBot, tmp_path: Path) -> None:
    request = JobRequest(
        "selftest-echo", tmp_path, {"commands": True, "steps": 0}, interactive=True
    )
    job = JobProcess(request)
    seen = Recorder(job)
    with qtbot.waitSignal(job.child.started, timeout=WAIT_MS):
        job.start()
    for n in (1, 2):
        with qtbot.waitSignal(job.output, timeout=WAIT_MS) as output:
            job.send({"n": n})
        assert output.args == [{"echo": {"n": n}}]  # answered before the next is sent
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        job.child.close_stdin()
    assert seen.names() == ["output", "output", "succeeded", "done"]
    assert seen.last("succeeded")["echoed"] == 2


def test_secrets_are_on_stdin_only(qtbot: QtBot, tmp_path: Path) -> None:
    key = bytes(range(32))
    request = JobRequest(
        "selftest-echo",
        tmp_path,
        {"steps": 1, "silent_s": 60, "read_key": "o"},
        keys={"o": key},
        audit_key=key,
    )
    job = JobProcess(request)
    with qtbot.waitSignal(job.progress, timeout=WAIT_MS):
        job.start()
    proc = Path("/proc") / str(job.child.pid)
    for visible in ("cmdline", "environ"):
        text = (proc / visible).read_bytes()
        assert key.hex().encode() not in text
        assert b"audit_key" not in text
    assert key.hex() not in job.child.command_line()
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        job.cancel()


def test_a_flood_of_stderr_never_blocks_the_child(qtbot: QtBot, tmp_path: Path) -> None:
    # 8 MiB of log before the one event: far beyond a pipe's 64 KiB, so the child would block
    # for ever on a wrapper that read stderr only at the end.
    code = (
        "import sys\n"
        "for i in range(80_000): sys.stderr.write(f'log line {i:06d} ' + 'x' * 90 + '\\n')\n"
        'print(\'{"type":"result","job":"flood","time":1,"data":{"ok":true}}\', flush=True)\n'
    )
    log = tmp_path / "flood.log"
    child = ChildProcess("flood", job_reader(), is_final=lambda e: e.type == "result", log_path=log)
    events: list[Any] = []
    child.event_received.connect(events.append)
    with qtbot.waitSignal(child.ended, timeout=WAIT_MS) as ended:
        child.start([sys.executable, "-c", code])
    outcome = ended.args[0]
    assert outcome.exit_code == 0
    assert outcome.final_event
    assert [e.data for e in events] == [{"ok": True}]
    assert len(outcome.stderr_tail) == STDERR_TAIL_LINES
    assert outcome.stderr_tail[-1].startswith("log line 079999 ")
    assert log.stat().st_size == 80_000 * 107


def test_a_program_that_cannot_start_is_reported(qtbot: QtBot, tmp_path: Path) -> None:
    child = ChildProcess("missing", job_reader())
    with qtbot.waitSignal(child.ended, timeout=WAIT_MS) as ended:
        child.start([str(tmp_path / "no-such-program")])
    outcome = ended.args[0]
    assert outcome.exit_code is None
    assert outcome.error
    assert not child.running
