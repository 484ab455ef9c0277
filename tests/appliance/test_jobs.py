"""The job contract: a real child process per test, started as the GUI and the CLI start one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.errors import UsageError
from appliance.events import EventReader
from appliance.jobs import JobError, JobFailed, JobProgress, JobRequest, job_reader, run_job
from appliance.jobs.events import parse_job_event
from appliance.jobs.request import KeyRing, parse_request


def test_progress_then_result(tmp_path: Path) -> None:
    outcome = run_job(JobRequest("selftest-echo", tmp_path, {"steps": 3}))
    assert outcome.ok
    assert outcome.exit_code == 0
    assert [e.type for e in outcome.events] == ["progress"] * 3 + ["result"]
    progress = [e for e in outcome.events if isinstance(e, JobProgress)]
    assert [(p.done, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert outcome.data()["steps"] == 3


def test_library_noise_on_stdout_goes_to_stderr(tmp_path: Path) -> None:
    outcome = run_job(JobRequest("selftest-echo", tmp_path, {"noise": "Loading weights 100%"}))
    assert outcome.ok
    assert outcome.bad_lines == []
    assert "Loading weights 100%" in outcome.stderr_tail


def test_failure_carries_the_clis_message_and_exit_code(tmp_path: Path) -> None:
    outcome = run_job(JobRequest("selftest-echo", tmp_path, {"fail": "no such model 'x'"}))
    assert not outcome.ok
    assert outcome.exit_code == 1
    assert outcome.message == "no such model 'x'"
    with pytest.raises(JobError, match="no such model 'x'"):
        outcome.data()


def test_internal_error_is_one_line_with_the_traceback_on_stderr(tmp_path: Path) -> None:
    outcome = run_job(JobRequest("selftest-echo", tmp_path, {"internal": True}))
    assert outcome.exit_code == 1
    assert outcome.failed is not None
    assert outcome.failed.kind == "internal"
    assert (
        outcome.message == "internal error in selftest-echo: RuntimeError: planted internal error"
    )
    assert any("Traceback" in line for line in outcome.stderr_tail)


def test_unknown_kind_is_a_usage_error(tmp_path: Path) -> None:
    outcome = run_job(JobRequest("no-such-kind", tmp_path))
    assert outcome.exit_code == 2
    assert "unknown job kind 'no-such-kind'" in outcome.message
    assert "selftest-echo" in outcome.message


def test_a_key_not_handed_over_is_refused(tmp_path: Path) -> None:
    outcome = run_job(JobRequest("selftest-echo", tmp_path, {"read_key": "obj1"}))
    assert outcome.exit_code == 2
    assert "was not given the key of the object asked for" in outcome.message
    given = JobRequest("selftest-echo", tmp_path, {"read_key": "obj1"}, keys={"obj1": b"k" * 32})
    assert run_job(given).ok


def test_interactive_commands_are_answered_in_order(tmp_path: Path) -> None:
    request = JobRequest(
        "selftest-echo", tmp_path, {"commands": True, "steps": 0}, interactive=True
    )
    outcome = run_job(request, commands=[{"n": 1}, {"n": 2}, {"n": 3}])
    outputs = [e.to_dict()["data"]["echo"]["n"] for e in outcome.events if e.type == "output"]
    assert outputs == [1, 2, 3]
    assert outcome.data()["echoed"] == 3


def test_sigterm_cancels_with_exit_130(tmp_path: Path) -> None:
    request = JobRequest("selftest-echo", tmp_path, {"silent_s": 60, "steps": 1})
    proc = subprocess.Popen(
        request.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(request.request_line())
    proc.stdin.close()
    reader = job_reader()
    first = reader.feed(proc.stdout.readline())
    assert [e.type for e in first] == ["progress"]
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait(timeout=30)
    events = reader.feed(rest) + reader.finish()
    assert proc.returncode == 130
    assert isinstance(events[-1], JobFailed)
    assert events[-1].kind == "cancelled"


def test_a_cancel_past_the_point_of_no_return_is_ignored(tmp_path: Path) -> None:
    request = JobRequest(
        "selftest-echo", tmp_path, {"steps": 1, "no_return": True, "silent_s": 1.5}
    )
    proc = subprocess.Popen(
        request.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(request.request_line())
    proc.stdin.close()
    reader = job_reader()
    assert [e.type for e in reader.feed(proc.stdout.readline())] == ["progress"]
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait(timeout=30)
    assert proc.returncode == 0
    assert [e.type for e in reader.feed(rest) + reader.finish()] == ["result"]


def test_model_import_params_are_checked(tmp_path: Path) -> None:
    for params, message in [
        ({}, "model-import needs 'source'"),
        ({"source": "/x"}, "model-import needs 'name'"),
        ({"source": "/x", "name": "m", "link": "yes"}, "'link' must be true or false"),
    ]:
        outcome = run_job(JobRequest("model-import", tmp_path, params))
        assert (outcome.exit_code, outcome.failed is not None) == (2, True)
        assert message in outcome.message


def test_a_killed_child_is_reported_with_its_signal(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome = run_job(JobRequest("selftest-echo", tmp_path, {"silent_s": 60}), timeout=2)
    assert time.monotonic() - started < 30
    assert outcome.exit_code == -signal.SIGKILL
    assert outcome.message.startswith("the selftest-echo process was killed by SIGKILL")


def test_secrets_travel_on_stdin_only(tmp_path: Path) -> None:
    key = bytes(range(32))
    request = JobRequest("selftest-echo", tmp_path, {"a": 1}, keys={"o": key}, audit_key=key)
    assert key.hex() not in " ".join(request.command())
    assert key.hex() not in repr(request)
    params, ring, audit = parse_request(request.request_line().decode())
    assert params == {"a": 1}
    assert audit == key
    assert ring.key("o", "it") == key
    assert request.command()[:3] == [sys.executable, "-m", "appliance.jobs"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "no request arrived"),
        ("[1,2]", "not a JSON object"),
        ('{"keys": {"o": "zz"}}', "not a JSON object of params and hex keys"),
        ('{"params": 3}', "params are not a JSON object"),
    ],
)
def test_bad_requests_are_usage_errors(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_request(line)


def test_keyring_names_the_missing_object() -> None:
    with pytest.raises(UsageError, match="dataset d version 2"):
        KeyRing({}).key("x", "dataset d version 2")


# --- the incremental reader ---------------------------------------------------------------------


def _lines(*events: str) -> bytes:
    return "".join(e + "\n" for e in events).encode()


def test_reader_joins_lines_split_across_chunks() -> None:
    data = _lines(
        '{"type":"progress","job":"k","time":1,"done":1,"total":2}',
        '{"type":"result","job":"k","time":2,"data":{"x":1}}',
    )
    reader = job_reader()
    found = []
    for i in range(len(data)):  # one byte at a time: the worst a pipe can do
        found += reader.feed(data[i : i + 1])
    assert [e.type for e in found] == ["progress", "result"]
    assert reader.bad_lines == []


def test_reader_reports_bad_lines_and_goes_on() -> None:
    seen: list[str] = []
    reader = job_reader("export output", on_bad_line=seen.append)
    found = reader.feed(
        _lines(
            "not json",
            '{"type":"progress","job":"k","time":1,"done":"lots"}',
            '{"type":"weird","job":"k","time":1}',
            '{"type":"result","job":"k","time":2}',
        )
    )
    assert [e.type for e in found] == ["result"]
    assert seen[0].startswith("export output line 1: not valid JSON")
    assert "field 'done' must be a whole number" in seen[1]
    assert "unknown job event type 'weird'" in seen[2]


def test_reader_drops_an_overlong_line_without_holding_it() -> None:
    reader: EventReader[object] = EventReader(parse_job_event, max_line=1000)
    assert reader.feed(b"x" * 600) == []
    assert reader.feed(b"x" * 600) == []  # over the limit: dropped, not buffered
    assert len(reader._buffer) == 0
    found = reader.feed(b"xx\n" + _lines('{"type":"result","job":"k","time":2}'))
    assert [type(e).__name__ for e in found] == ["JobResult"]
    assert "longer than 1000 bytes" in reader.bad_lines[0]


def test_reader_finish_parses_a_last_line_without_newline() -> None:
    reader = job_reader()
    assert reader.feed(b'{"type":"result","job":"k","time":2}') == []
    assert [e.type for e in reader.finish()] == ["result"]


def test_reader_survives_deep_nesting() -> None:
    reader = job_reader()
    assert reader.feed(b"[" * 100_000 + b"\n") == []
    assert "nested too deeply" in reader.bad_lines[0] or "not valid JSON" in reader.bad_lines[0]
