"""One training run followed live by the desktop app: started here, or re-attached.

A run started from the Train page goes through the core's one door, as ``appliance train``
does: :func:`runs.prepare_launch` (on a :class:`~gui.tasks.Task`), then the child started
through :class:`~gui.process.ChildProcess` with ``plan.keys`` on its stdin, then
:func:`runs.mark_started` with the worker's PID, and :func:`runs.finalize` once it has ended.
The child is the worker behind a stand-in (:mod:`appliance.training.standin`): QProcess kills
its child when the window closes, and the stand-in is what dies then, while the worker trains on
("keep training in the background"). Its events arrive on the pipe; its log goes to the run's
``train.log``, which the log console follows.

A run already running when the page looks (started by ``appliance train --detach``, or kept
running by an earlier window) is *attached*: its ``metrics.jsonl`` and ``train.log`` are
followed from where the page's replay stopped (:class:`~gui.follow.FileFollower`), and its end
is seen through a pidfd (:class:`~gui.follow.ProcessWatch`); then it is settled the same way.

Stop sends SIGTERM to the worker (it checkpoints, says ``stopped`` and exits), and SIGKILL if it
is still there :data:`~appliance.training.runs.STOP_TIMEOUT_S` later; Stop without saving sends
SIGKILL at once. Nothing here blocks: registry work runs on tasks, the rest on signals.
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from appliance.training import events as ev
from appliance.training import runs
from appliance.training.placement import Placement
from appliance.training.process import process_alive, signal_run
from appliance.training.runfolder import RunFolder
from appliance.training.standin import standin_command
from appliance.unlocked import UnlockedWorkspace
from gui.follow import FileFollower, ProcessWatch
from gui.process import ChildOutcome, ChildProcess
from gui.tasks import Progress, Task

HANG_S = 900.0
"""A training child may load a large model for minutes without an event: only a silence longer
than this is reported as a hang."""
LOG_TAIL_LINES = 20
"""How many of the log's last lines a failure shows."""
KILLED_REASON = "stopped without saving from the desktop app; resume it from its last checkpoint"
TIMEOUT_REASON = (
    "it did not stop within {:.0f} s and was killed; resume it from its last checkpoint"
)


@dataclass
class Settled:
    """How a followed run ended, once settled in the registry."""

    run_id: str
    state: str
    """finished, stopped or failed (or the registry's state when it was settled elsewhere)."""
    message: str = ""
    adapter: str | None = None
    log_tail: list[str] = field(default_factory=list)


class LiveRun(QObject):
    """A run this window follows as it trains. Create with :meth:`launch` or :meth:`attach`."""

    started = Signal(int)
    """The worker's PID is known and recorded: the run is running."""
    event_received = Signal(object)
    """One training event, in order (``spawned`` is kept to this class)."""
    log_appended = Signal(bytes)
    """New bytes of the run's ``train.log``."""
    notice = Signal(str)
    """Something worth a line in the page: a garbled line, a silence, a stop requested."""
    settled = Signal(object)
    """The run has ended and is settled: its :class:`Settled`. The last signal."""

    def __init__(
        self, workspace: UnlockedWorkspace, run_id: str, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.run_id = run_id
        self.folder: Path | None = None
        self.pid: int | None = None
        self.own = False
        self.stopping = False
        self.ended = False
        self.child: ChildProcess | None = None
        self._plan: runs.LaunchPlan | None = None
        self.result: Settled | None = None
        self._reason: str | None = None
        self._mark: Task | None = None
        self._exit: ChildOutcome | None = None
        self._log: FileFollower | None = None
        self._metrics: FileFollower | None = None
        self._reader = ev.reader("metrics.jsonl", self._bad_file_line)
        self._watch: ProcessWatch | None = None
        self._tasks: list[Task] = []
        self._stop_timer = QTimer(self)
        self._stop_timer.setSingleShot(True)
        self._stop_timer.timeout.connect(self._stop_timed_out)

    # -- starting ---------------------------------------------------------------------------------

    def launch(self, threads: int | None = None, placement: Placement | None = None) -> None:
        """Prepare the run's launch (a task), then start its child; for a new run or a resume.

        Args:
            threads: CPU threads of the child (the core's default when None).
            placement: the devices (the Train page's picker); every GPU when None.
        """
        self.own = True
        workspace, run_id = self.workspace, self.run_id

        def prepare(_progress: Progress) -> tuple[runs.LaunchPlan, int]:
            with workspace.registry() as reg:
                plan = runs.prepare_launch(
                    workspace.vault, reg, run_id, threads=threads, placement=placement
                )
            return plan, plan.log_file.stat().st_size

        self._task("preparing the launch", prepare, self._prepared, self._not_started)

    @Slot(object)
    def _prepared(self, result: tuple[runs.LaunchPlan, int]) -> None:
        plan, log_offset = result
        self.folder = plan.folder
        self._follow_log(plan.log_file, log_offset)
        child = ChildProcess(
            "training process",
            ev.reader("training output"),
            is_final=lambda event: isinstance(event, runs.TERMINAL),
            hang_s=HANG_S,
            parent=self,
        )
        child.event_received.connect(self._child_event)
        child.bad_line.connect(self._bad_line)
        child.hung.connect(self.notice)
        child.ended.connect(self._child_ended)
        self.child = child
        self._plan = dataclasses.replace(plan, keys=b"")  # the keys go to the child, nowhere else
        child.start(standin_command(plan.command, plan.log_file, self.run_id), plan.keys)

    @Slot(str)
    def _not_started(self, message: str) -> None:
        self.ended = True
        self._emit_settled(Settled(self.run_id, "failed", message))

    def attach(self, pid: int, folder: Path, metrics_offset: int, log_offset: int) -> None:
        """Follow a run that is running in a process of its own, from the given offsets."""
        self.pid, self.folder = pid, folder
        run = RunFolder(folder)
        self._follow_log(run.log, log_offset)
        self._metrics = FileFollower(run.metrics, metrics_offset, self)
        self._metrics.appended.connect(self._file_data)
        self._metrics.start()
        self._watch = ProcessWatch(pid, self.run_id, self)
        self._watch.exited.connect(self._process_exited)
        self._watch.start()
        self.started.emit(pid)

    def _follow_log(self, path: Path, offset: int) -> None:
        self._log = FileFollower(path, offset, self)
        self._log.appended.connect(self.log_appended)
        self._log.start()

    # -- control ----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether it has not ended and been settled yet."""
        return self.result is None

    def stop(self) -> bool:
        """Ask the worker to checkpoint and stop; whether the request could be sent."""
        if self.pid is None or self.ended:
            return False
        if not signal_run(self.pid, self.run_id, signal.SIGTERM):
            return False
        self.stopping = True
        self._stop_timer.start(int(runs.STOP_TIMEOUT_S * 1000))
        self.notice.emit("Stopping after the current step and a checkpoint…")
        return True

    def kill(self, reason: str = KILLED_REASON) -> bool:
        """End the worker at once (SIGKILL): what it did since its last checkpoint is lost."""
        if self.pid is None or self.ended:
            return False
        self._reason = reason
        return signal_run(self.pid, self.run_id, signal.SIGKILL)

    def release(self) -> None:
        """Stop following and let the run train on without this window (it is re-attached at
        the next start). The stand-in is killed now rather than by QProcess at exit; the worker,
        in a process session of its own, is not touched."""
        self._stop_timer.stop()
        for follower in (self._log, self._metrics):
            if follower is not None:
                follower.stop()
        if self._watch is not None:
            self._watch.stop()
        if self.child is not None:
            self.child.ended.disconnect(self._child_ended)
            self.child.event_received.disconnect(self._child_event)
            self.child.kill()

    # -- what the child or the files say ---------------------------------------------------------

    @Slot(object)
    def _child_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.Spawned):
            self.pid = event.pid
            workspace, plan, pid = self.workspace, self._plan, event.pid

            def mark(_progress: Progress) -> None:
                assert plan is not None
                with workspace.registry() as reg:
                    runs.mark_started(workspace.vault, reg, plan, pid)

            self._mark = self._task("recording the start", mark, None, self.notice)
            self.started.emit(pid)
            return
        self.event_received.emit(event)

    @Slot(bytes)
    def _file_data(self, data: bytes) -> None:
        for event in self._reader.feed(data):
            self.event_received.emit(event)

    @Slot(str)
    def _bad_line(self, message: str) -> None:
        self.notice.emit(f"The training process wrote a line that is not an event: {message}")

    def _bad_file_line(self, message: str) -> None:
        self.notice.emit(f"A line of the run's events could not be read: {message}")

    @Slot(object)
    def _child_ended(self, outcome: ChildOutcome) -> None:
        if self.pid is not None and process_alive(self.pid, self.run_id) and self.folder:
            # The stand-in was killed from outside while the worker trains on: follow the files.
            self.notice.emit("Following the run through its files from now on.")
            run = RunFolder(self.folder)
            self._metrics = FileFollower(run.metrics, run.metrics.stat().st_size, self)
            self._metrics.appended.connect(self._file_data)
            self._metrics.start()
            self._watch = ProcessWatch(self.pid, self.run_id, self)
            self._watch.exited.connect(self._process_exited)
            self._watch.start()
            return
        self._exit = outcome
        if outcome.error and self._reason is None:
            self._reason = f"the training process could not be started: {outcome.error}"
        self._ended()

    @Slot()
    def _process_exited(self) -> None:
        if self._metrics is not None:
            self._metrics.read_all()  # the events written just before the exit
        for event in self._reader.finish():
            self.event_received.emit(event)
        self._ended()

    def _ended(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._stop_timer.stop()
        if self._mark is not None and self._mark.running:
            self._mark.done.connect(self._settle)  # record the start before settling the end
        else:
            self._settle()

    @Slot()
    def _settle(self) -> None:
        if self._log is not None:
            self._log.read_all()
        workspace, run_id, reason = self.workspace, self.run_id, self._reason
        code = self._exit.exit_code if self._exit is not None else None

        def finalize(_progress: Progress) -> Settled:
            with workspace.registry() as reg:
                outcome = runs.finalize(workspace.vault, reg, run_id, exit_code=code, reason=reason)
                folder = runs.run_folder(workspace.vault, reg.runs.get(run_id))
            tail = folder.log_tail(LOG_TAIL_LINES) if outcome.state == "failed" else []
            return Settled(run_id, outcome.state, outcome.message or "", outcome.adapter, tail)

        self._task("settling the run", finalize, self._emit_settled, self._settle_failed)

    @Slot(str)
    def _settle_failed(self, message: str) -> None:
        self._emit_settled(Settled(self.run_id, "failed", f"could not settle the run: {message}"))

    def _emit_settled(self, result: Settled) -> None:
        for follower in (self._log, self._metrics):
            if follower is not None:
                follower.stop()
        if self._watch is not None:
            self._watch.stop()
        self.result = result
        self.settled.emit(result)

    @Slot()
    def _stop_timed_out(self) -> None:
        self.kill(TIMEOUT_REASON.format(runs.STOP_TIMEOUT_S))

    def _task(self, name: str, fn: Any, ok: Any, failed: Any) -> Task:
        task = Task(name, fn, self)
        if ok is not None:
            task.succeeded.connect(ok)
        if failed is not None:
            task.failed.connect(failed)
        task.done.connect(lambda: self._tasks.remove(task))
        self._tasks.append(task)
        task.start()
        return task
