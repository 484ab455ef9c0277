"""Driving an interactive ``generate`` job from a process without Qt (the CLI, tests).

The desktop app drives the same job with QProcess; this is the blocking equivalent:
``start`` the child, wait until it has ``loaded``, then ``ask`` one question at a time and read
the answer's events as they stream. The child runs in its own session, so Ctrl-C in a terminal
reaches only the CLI, which decides what it means (stop the answer, or end the chat).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Any, Self

from appliance.errors import UsageError
from appliance.generation.protocol import (
    EVENT_ADDED,
    EVENT_ANSWER,
    EVENT_ERROR,
    EVENT_LOADED,
    Generate,
    Load,
    Stop,
)
from appliance.jobs import JobError, JobEvent, JobFailed, JobOutput, JobRequest, job_reader
from appliance.jobs.runner import STDERR_TAIL_LINES, describe_exit

CLOSE_TIMEOUT_S = 30.0


class GenerationSession:
    """One ``generate`` child: start it, ask questions, close it."""

    def __init__(self, request: JobRequest) -> None:
        self.request = request
        self.loaded: dict[str, Any] = {}
        self.events: list[JobEvent] = []
        self._ids = itertools.count(1)
        self._pending: collections.deque[JobEvent] = collections.deque()
        self._reader = job_reader(f"{request.kind} output")
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ended = False

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start the child and wait until the model is loaded.

        Returns:
            The ``loaded`` event's data (base model, adapters, device, context length).

        Raises:
            JobError: the child failed while loading, with its one-line message.
        """
        self._proc = subprocess.Popen(
            self.request.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
        )
        assert self._proc.stderr is not None
        threading.Thread(target=self._drain, args=(self._proc.stderr,), daemon=True).start()
        self._write(self.request.request_line())
        for event in self._events():
            if isinstance(event, JobOutput) and event.data.get("event") == EVENT_LOADED:
                self.loaded = dict(event.data)
                return self.loaded
        raise self._ended_error()

    def close(self) -> int:
        """Close stdin (the child finishes and exits) and wait; returns its exit code."""
        if self._proc is None:
            return 0
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        for _ in self._events():
            pass
        try:
            return self._proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def cancel(self) -> None:
        """SIGTERM: the job's Cancel; the child ends at once."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.cancel()
        self.close()

    @property
    def alive(self) -> bool:
        """Whether the child is still running (it can take another question)."""
        return self._proc is not None and self._proc.poll() is None and not self._ended

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- asking -----------------------------------------------------------------------------------

    def ask(self, command: Generate) -> Iterator[dict[str, Any]]:
        """Send one question; yield its ``token`` events' data, then its ``answer``.

        Raises:
            UsageError / JobError: the job refused the question (an empty prompt, a prompt
                longer than the context...), or ended.
        """
        if not command.id:
            command = Generate(
                id=f"q{next(self._ids)}",
                adapter=command.adapter,
                messages=command.messages,
                settings=command.settings,
            )
        self._write((json.dumps(command.to_dict()) + "\n").encode())
        for event in self._events():
            if not isinstance(event, JobOutput):
                continue
            data = event.data
            if data.get("id") not in (command.id, ""):
                continue
            if data.get("event") == EVENT_ERROR:
                message = str(data.get("message", "the question was refused"))
                if data.get("kind") == "usage":
                    raise UsageError(message)
                raise JobError(message)
            yield data
            if data.get("event") == EVENT_ANSWER:
                return
        raise self._ended_error()

    def load(self, command: Load) -> dict[str, Any]:
        """Load more adapters beside those loaded; returns the ``added`` event's data.

        Raises:
            UsageError / JobError: the job refused them (another base model...), or ended.
        """
        if not command.id:
            command = Load(f"l{next(self._ids)}", command.adapters, command.keys)
        self._write((json.dumps(command.to_dict()) + "\n").encode())
        for event in self._events():
            if not isinstance(event, JobOutput) or event.data.get("id") != command.id:
                continue
            data = event.data
            if data.get("event") == EVENT_ERROR:
                message = str(data.get("message", "the adapters could not be loaded"))
                raise UsageError(message) if data.get("kind") == "usage" else JobError(message)
            if data.get("event") == EVENT_ADDED:
                return dict(data)
        raise self._ended_error()

    def stop_answer(self) -> None:
        """Ask the child to end the answer it is generating (it ends with ``finish: stopped``)."""
        self._write((json.dumps(Stop().to_dict()) + "\n").encode())

    # -- plumbing -------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self._proc is not None
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the child has ended; reading its events says why

    def _events(self) -> Iterator[JobEvent]:
        assert self._proc is not None
        assert self._proc.stdout is not None
        while True:
            while self._pending:
                event = self._pending.popleft()
                self.events.append(event)
                yield event
            if self._ended:
                return
            chunk = os.read(self._proc.stdout.fileno(), 65536)
            if not chunk:
                self._pending.extend(self._reader.finish())
                self._ended = True
                continue
            self._pending.extend(self._reader.feed(chunk))

    def _ended_error(self) -> JobError:
        assert self._proc is not None
        failed = next((e for e in reversed(self.events) if isinstance(e, JobFailed)), None)
        if failed is not None:
            return JobError(failed.message, failed.exit_code)
        code = self._proc.wait()
        return JobError(describe_exit(self.request.kind, code, list(self._tail)))

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self._tail.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
