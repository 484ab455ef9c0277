"""Train: set up a run, see whether it fits, start it, watch it live, stop and resume it.

The left side (:class:`~gui.widgets.train_setup.TrainSetup`) chooses what to train and how; the
right side follows one run at a time: a header with its state, a progress bar with elapsed time
and ETA, Stop / Stop without saving / Resume, the charts (:mod:`gui.widgets.run_charts`), and
below them every run of the workspace and the run's log.

The page keeps a :class:`~appliance.training.progress.RunProgress` (the core's view-model, the
same one ``appliance train`` prints) and numpy series beside it (:class:`gui.chart_data.ChartData`)
for the run it shows, fed from a :class:`~gui.live_run.LiveRun` event by event, or built from
the run's ``metrics.jsonl`` on a task when a run is chosen in the list. A run that is running in
another process (``appliance train --detach``, or kept training when a window closed) is
re-attached: replayed, then followed live. Everything slow runs on tasks or in child processes.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from appliance.gpu import GpuState
from appliance.training import events as ev
from appliance.training import runs
from appliance.training.overview import RunSummary, run_summaries
from appliance.training.placement import Placement
from appliance.training.progress import FAILED, FINISHED, RunProgress, duration, final_metrics
from appliance.training.runfolder import RunFolder
from appliance.unlocked import UnlockedWorkspace
from gui.chart_data import ChartData
from gui.live_run import LiveRun, Settled
from gui.pages.base import Page
from gui.style import ERROR_STYLE
from gui.tasks import Progress, Task
from gui.widgets.log_console import LogConsole
from gui.widgets.runs_table import STATE_COLOURS, RunsTable
from gui.widgets.train_setup import Request, TrainSetup, default_gpus

CHARTS_MODULE = "gui.widgets.run_charts"
REPLAY_SLICE = 256 * 1024
"""A long history is replayed in slices of this many bytes (see :func:`load_history`)."""
HISTORY_LOG_LINES = 200
"""Log lines shown when a run is chosen (the whole log is in its folder)."""
RESUMABLE = ("stopped", "failed", "lost")
CHARTS_DELAY_MS = 1000
VIEW_MS = 200
"""The progress bar and the run's line are rewritten at most five times a second."""
KEEP, STOP, CANCEL = "keep", "stop", "cancel"
_NOTICE_STYLE = "color: #8d6e00;"


@dataclass
class History:
    """A run's recorded events and log, read on a task."""

    run_id: str
    progress: RunProgress
    data: ChartData
    metrics_offset: int
    """Where the replay stopped (after the last whole line): a live run is followed from here."""
    log_lines: list[str]
    log_offset: int
    bad_lines: list[str] = field(default_factory=list)


def load_history(summary: RunSummary) -> History:
    """Replay a run's ``metrics.jsonl`` and read its log's end (off the GUI thread)."""
    folder = RunFolder(summary.folder)
    try:
        raw = folder.metrics.read_bytes()
    except OSError:
        raw = b""
    # A running run may be writing its last line right now: replay whole lines only, and
    # follow from there.
    end = raw.rfind(b"\n") + 1
    bad: list[str] = []
    reader = ev.reader(folder.metrics.name, bad.append)
    progress = RunProgress()
    for start in range(0, end, REPLAY_SLICE):
        for event in reader.feed(raw[start : min(end, start + REPLAY_SLICE)]):
            progress.apply(event)
        time.sleep(0)  # let the GUI thread take the interpreter lock between slices
    if summary.state == "lost":
        progress.mark_lost(summary.message)
    elif summary.state == "failed" and progress.state != FAILED:
        progress.state, progress.failure = FAILED, summary.message
    try:
        log_offset = folder.log.stat().st_size
    except OSError:
        log_offset = 0
    return History(
        summary.run_id,
        progress,
        ChartData.from_progress(progress),
        end,
        folder.log_tail(HISTORY_LOG_LINES),
        log_offset,
        bad,
    )


_CHARTS_IMPORTED = threading.Event()


def charts_module() -> ModuleType | None:
    """The charts module once it is wholly imported (pyqtgraph takes seconds to import)."""
    return sys.modules.get(CHARTS_MODULE) if _CHARTS_IMPORTED.is_set() else None


def import_charts(_progress: Progress) -> ModuleType:
    """Import the charts module (on a task; a second caller waits on Python's import lock)."""
    module = importlib.import_module(CHARTS_MODULE)
    _CHARTS_IMPORTED.set()
    return module


class TrainPage(Page):
    """Set up, start, watch, stop and resume training runs."""

    title = "Train"
    purpose = (
        "QLoRA or LoRA training in a separate process, with the memory estimate before launch "
        "and live loss, throughput and memory while it runs."
    )
    expanding = True

    run_settled = Signal(object)
    """A run followed here has ended and been settled (:class:`~gui.live_run.Settled`)."""
    runs_listed = Signal()
    """The runs list (and the model and dataset choices) were read anew."""
    history_loaded = Signal(str)
    """The run with this id was replayed into the charts."""
    close_ready = Signal()
    """A stop asked for by closing the window has ended: the window may close now."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.live: LiveRun | None = None
        self.shown: str | None = None
        """The run whose progress the right side shows."""
        self.progress = RunProgress()
        self.data = ChartData()
        self.live_progress = RunProgress()
        """The followed run's progress (shown when that run is the one shown)."""
        self.live_data = ChartData()
        self.charts: Any = None
        self.progress_of: str | None = None
        """The run whose whole history :attr:`progress` holds (Resume goes on from it)."""
        self.notices: list[str] = []
        self._tasks: list[Task] = []
        self._close_after_stop = False
        self._charts_task: Task | None = None
        self._view_timer = QTimer(self)
        self._view_timer.setObjectName("runViewTimer")
        self._view_timer.setSingleShot(True)
        self._view_timer.timeout.connect(self._show_progress)

        self.setup = TrainSetup(workspace)
        self.setup.start_requested.connect(self.start)
        self.setup.setMinimumWidth(300)
        self.setup.setMaximumWidth(380)

        self.run_title = QLabel("No run yet")
        self.run_title.setObjectName("runTitle")
        self.run_title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.run_state = QLabel()
        self.run_state.setObjectName("runState")
        header = QHBoxLayout()
        header.addWidget(self.run_title, 1)
        header.addWidget(self.run_state)
        self.bar = QProgressBar()
        self.bar.setObjectName("runProgress")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Finish the current step, save a checkpoint and stop.")
        self.stop_button.clicked.connect(self.stop)
        self.kill_button = QPushButton("Stop without saving")
        self.kill_button.setToolTip(
            "End the training process now; progress since the last checkpoint is lost."
        )
        self.kill_button.clicked.connect(self.stop_without_saving)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the chosen run from its last checkpoint.")
        self.resume_button.clicked.connect(self.resume)
        controls = QHBoxLayout()
        controls.addWidget(self.bar, 1)
        controls.addWidget(self.stop_button)
        controls.addWidget(self.kill_button)
        controls.addWidget(self.resume_button)
        # The run's one-line progress, rewritten several times a second: a line edit, whose size
        # does not depend on its text, so that no rewrite lays the window out again.
        self.live_line = QLineEdit()
        self.live_line.setObjectName("runLine")
        self.live_line.setReadOnly(True)
        self.live_line.setFrame(False)
        self.live_line.setStyleSheet("QLineEdit { background: transparent; }")
        self.status = QLabel()
        self.status.setObjectName("runStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.failure = QLabel()
        self.failure.setObjectName("runFailure")
        self.failure.setWordWrap(True)
        self.failure.setStyleSheet(ERROR_STYLE)
        self.failure.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.failure.hide()

        self.chart_area = QVBoxLayout()
        self.chart_hint = QLabel("Charts appear here.")
        self.chart_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.chart_area.addWidget(self.chart_hint)
        chart_holder = QWidget()
        chart_holder.setLayout(self.chart_area)

        self.runs_table = RunsTable()
        self.runs_table.run_chosen.connect(self.show_run)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        runs_tab = QWidget()
        runs_layout = QVBoxLayout(runs_tab)
        runs_layout.setContentsMargins(0, 4, 0, 0)
        runs_layout.addWidget(self.runs_table, 1)
        runs_layout.addWidget(refresh, 0, Qt.AlignmentFlag.AlignRight)
        self.console = LogConsole()
        self.tabs = QTabWidget()
        self.tabs.addTab(runs_tab, "Runs")
        self.tabs.addTab(self.console, "Log")

        watch = QWidget()
        watch_layout = QVBoxLayout(watch)
        watch_layout.setContentsMargins(0, 0, 0, 0)
        watch_layout.setSpacing(4)
        watch_layout.addLayout(header)
        watch_layout.addLayout(controls)
        watch_layout.addWidget(self.live_line)
        watch_layout.addWidget(self.status)
        watch_layout.addWidget(self.failure)
        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(chart_holder)
        vertical.addWidget(self.tabs)
        vertical.setStretchFactor(0, 3)
        vertical.setStretchFactor(1, 1)
        vertical.setChildrenCollapsible(False)
        watch_layout.addWidget(vertical, 1)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.setup)
        split.addWidget(watch)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        self.body.addWidget(split, 1)

        # pyqtgraph is imported on a task, a moment after the window first paints (the import
        # competes for the interpreter), or at once when the page is shown.
        QTimer.singleShot(CHARTS_DELAY_MS, self._load_charts)
        self._update_controls()
        if workspace is None:
            self.setup.say("Unlock the workspace to train.", error=True)
        else:
            self.refresh()

    # -- the workspace ----------------------------------------------------------------------------

    @Slot()
    def refresh(self) -> Task | None:
        """Read models, datasets and runs (a task); re-attach a run that is running elsewhere."""
        workspace = self.workspace
        if workspace is None:
            return None

        def read(_progress: Progress) -> tuple[list[Any], list[Any], list[RunSummary]]:
            with workspace.registry() as reg:
                return (
                    reg.models.all(),
                    reg.datasets.versions(),
                    run_summaries(workspace.ws.home, reg),
                )

        return self._task("reading runs", read, self._listed, self._say_error)

    @Slot(object)
    def _listed(self, found: tuple[list[Any], list[Any], list[RunSummary]]) -> None:
        models, datasets, summaries = found
        self.setup.set_choices(models, datasets)
        self.runs_table.show_runs(summaries, keep=self.shown)
        running = [s.run_id for s in summaries if s.live]
        if running and not self.busy:
            # A run trains in a process of its own (the CLI's --detach, or kept training when
            # a window closed): show it, which re-attaches it.
            self.shown = None
            self.runs_table.select(running[0])
            if self.shown != running[0]:
                self.show_run(running[0])
        self._update_controls()
        self.runs_listed.emit()

    @Slot(object)
    def show_gpus(self, state: GpuState) -> None:
        self.setup.show_gpus(state)

    # -- starting ---------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a run is followed live (Start is refused meanwhile)."""
        return self.live is not None and self.live.active

    @Slot()
    def start(self) -> None:
        """Create a run from the setup and start it (the Start button)."""
        request = self.setup.request()
        if self.busy and self.live is not None:
            self.setup.say(
                f"Run {self.live.run_id} is active: stop it, or wait for it to end, before "
                "starting another.",
                error=True,
            )
            return
        if request is None or self.workspace is None:
            self.setup.say(
                "Choose a model and a dataset, name the adapter and correct the "
                "settings marked in red.",
                error=True,
            )
            return
        workspace = self.workspace

        def create(_progress: Progress) -> str:
            with workspace.registry() as reg:
                return runs.create_run(
                    workspace.vault,
                    reg,
                    model=request.model,
                    dataset=request.dataset,
                    adapter_name=request.adapter,
                    config=request.config,
                )

        self.setup.set_blocked("Creating the run…")
        self.setup.say("Creating the run…")
        self._task(
            "creating the run",
            create,
            lambda run_id: self._created(run_id, request),
            self._not_created,
        )

    def _created(self, run_id: str, request: Request) -> None:
        self.setup.say("")
        self.shown = self.progress_of = run_id
        self.console.reset()
        live = LiveRun(self.workspace, run_id, self)  # type: ignore[arg-type]
        self._follow(live, RunProgress(), ChartData())
        live.launch(placement=request.placement)
        self.run_title.setText(
            f"{run_id} · {request.model} · {request.dataset} → {request.adapter}"
        )
        self.refresh()

    @Slot(str)
    def _not_created(self, message: str) -> None:
        self.setup.set_blocked("")
        self.setup.say(message, error=True)
        self.refresh()  # a dataset deleted meanwhile disappears from the choices

    @Slot()
    def resume(self) -> None:
        """Continue the run shown from its last checkpoint."""
        summary = self.runs_table.summary(self.shown or "")
        if (
            self.workspace is None
            or self.busy
            or summary is None
            or summary.state not in RESUMABLE
            or self.progress_of != summary.run_id
        ):
            return
        self.failure.hide()
        live = LiveRun(self.workspace, summary.run_id, self)
        self._follow(live, self.progress, self.data)
        # As 'appliance run resume' without --gpus: on the GPUs the workspace allows.
        live.launch(placement=Placement(gpus=default_gpus(self.setup.training_gpus)))

    def _follow(self, live: LiveRun, progress: RunProgress, data: ChartData) -> None:
        """Follow ``live`` (shown now), whose history so far is ``progress`` and ``data``."""
        if self.live is not None:
            self.live.deleteLater()
        self.live = live
        self.live_progress, self.live_data = progress, data
        self.progress = progress
        self._show_data(data)
        self.notices = []
        live.started.connect(self._update_controls)
        live.event_received.connect(self._event)
        live.log_appended.connect(self._log)
        live.notice.connect(self._notice)
        live.settled.connect(self._settled)
        self.setup.set_blocked(f"Run {live.run_id} is active; stop it or wait for it to end first.")
        self.failure.hide()
        self.status.setStyleSheet("")
        self.status.setText("Starting the training process…")
        self.bar.setRange(0, 0)
        self._update_controls()

    # -- stopping ---------------------------------------------------------------------------------

    @Slot()
    def stop(self) -> None:
        """Stop gracefully: the run checkpoints first and can be resumed."""
        if self.live is not None and self.live.stop():
            self._update_controls()

    @Slot()
    def stop_without_saving(self) -> None:
        """After a confirmation, end the training process at once."""
        live = self.live
        if live is None or not live.active:
            return
        if self.confirm_kill(live.run_id) and live.kill():
            self.status.setText("Ending the training process…")
            self._update_controls()

    def confirm_kill(self, run_id: str) -> bool:
        """Ask before Stop without saving (tests replace this)."""
        answer = QMessageBox.question(
            self,
            "Stop without saving",
            f"End run {run_id} now? What it learnt since its last checkpoint is lost; it can "
            "be resumed from that checkpoint.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def ask_on_close(self, run_id: str) -> str:
        """Closing during a run: KEEP training in the background, STOP it, or CANCEL closing."""
        box = QMessageBox(self)
        box.setWindowTitle("A run is training")
        box.setText(f"Run {run_id} is training. What should happen to it?")
        box.setInformativeText(
            "Kept in the background, it trains on and this window shows it again at its next "
            "start. Stopped, it saves a checkpoint and can be resumed later."
        )
        keep = box.addButton("Keep training in the background", QMessageBox.ButtonRole.AcceptRole)
        stop = box.addButton("Stop (with checkpoint)", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton("Cancel", QMessageBox.ButtonRole.RejectRole)
        box.exec()
        clicked = box.clickedButton()
        return KEEP if clicked is keep else STOP if clicked is stop else CANCEL

    def may_close(self) -> bool:
        """Whether the window may close now; asks what to do with a run in progress."""
        live = self.live
        if live is None or not live.active:
            return True
        choice = self.ask_on_close(live.run_id)
        if choice == KEEP:
            live.release()
            self.live = None
            return True
        if choice == STOP:
            self._close_after_stop = True
            if not live.stopping:
                live.stop()
            self.status.setText("Stopping the run; the window closes once it has saved.")
        return False

    # -- following --------------------------------------------------------------------------------

    @property
    def showing_live(self) -> bool:
        """Whether the run shown is the one followed live."""
        return self.live is not None and self.live.run_id == self.shown

    @Slot(object)
    def _event(self, event: ev.Event) -> None:
        progress = self.live_progress
        progress.apply(event)
        changed = self.live_data.add(event, progress)
        if "all" in changed:  # a resume replaced points: draw anew
            self.live_data = ChartData.from_progress(progress)
        if not self.showing_live:
            return
        if "all" in changed:
            self._show_data(self.live_data)
        elif self.charts is not None:
            self.charts.changed(changed)
        if not self._view_timer.isActive():
            self._view_timer.start(VIEW_MS)

    @Slot(bytes)
    def _log(self, data: bytes) -> None:
        if self.showing_live:
            self.console.feed(data)

    @Slot(str)
    def _notice(self, message: str) -> None:
        self.notices.append(message)
        self.status.setStyleSheet(_NOTICE_STYLE)
        self.status.setText(message)

    @Slot(object)
    def _settled(self, result: Settled) -> None:
        self.setup.set_blocked("")
        self.setup.say("")
        if result.run_id != self.shown:
            self.run_settled.emit(result)
            self.refresh()
            self._update_controls()
            return
        if result.state == FINISHED:
            done = self.progress.final
            figures = f": {final_metrics(done)}" if done is not None else ""
            self.status.setStyleSheet("")
            self.status.setText(f"Finished: adapter {result.adapter}{figures}")
        elif result.state == "stopped":
            self.status.setStyleSheet("")
            self.status.setText(f"Stopped ({result.message}); Resume continues it.")
        else:
            self._show_failure(result.message, result.log_tail)
        self._show_state(result.state)
        self.run_settled.emit(result)
        self.refresh()
        self._update_controls()
        if self._close_after_stop:
            self._close_after_stop = False
            self.close_ready.emit()

    # -- choosing a run ---------------------------------------------------------------------------

    @Slot(str)
    def show_run(self, run_id: str) -> None:
        """Show a run of the list: its recorded events (a task), then live if it is running."""
        summary = self.runs_table.summary(run_id)
        if summary is None or run_id == self.shown:
            return
        if self.live is not None and self.live.active and self.live.run_id == run_id:
            self._show_live()
            return
        self.shown = run_id
        self.progress_of = None  # until its history is read
        self.run_title.setText(
            f"{run_id} · {summary.model} · {summary.dataset}"
            + (f" → {', '.join(summary.adapters)}" if summary.adapters else "")
        )
        self.status.setStyleSheet("")
        self.status.setText("Reading the run's events…")
        self.failure.hide()
        self._task(
            "replaying the run", lambda _p: load_history(summary), self._loaded, self._say_error
        )

    @Slot(object)
    def _loaded(self, history: History) -> None:
        if history.run_id != self.shown:
            return  # another run was chosen meanwhile
        if self.busy and self.live is not None and self.live.run_id == history.run_id:
            # Two refreshes in quick succession replayed the run twice, and the first replay
            # re-attached it: keep following it rather than showing this older snapshot.
            self._show_live()
            return
        self.progress_of = history.run_id
        self.progress = history.progress
        self._show_data(history.data)
        self.console.reset(history.log_lines)
        summary = self.runs_table.summary(history.run_id)
        attach = (
            summary is not None
            and summary.live
            and summary.pid
            and not self.busy
            and self.workspace is not None
        )
        if attach and summary is not None and summary.pid is not None and self.workspace:
            live = LiveRun(self.workspace, summary.run_id, self)
            self._follow(live, history.progress, history.data)
            live.attach(summary.pid, summary.folder, history.metrics_offset, history.log_offset)
            self.status.setText("Running in a process of its own; followed live.")
        elif summary is not None:
            self._show_state(summary.state)
            if summary.state in (FAILED, "lost"):
                self._show_failure(summary.message, history.log_lines[-20:])
            else:
                self.status.setText("")
        if history.bad_lines:
            self._notice(
                f"{len(history.bad_lines)} line(s) of its events could not be read: "
                f"{history.bad_lines[0]}"
            )
        self._show_progress()
        self._update_controls()
        self.history_loaded.emit(history.run_id)

    # -- showing ----------------------------------------------------------------------------------

    def _show_live(self) -> None:
        """Show the run followed live again (after another run was looked at)."""
        live = self.live
        assert live is not None
        self.shown = self.progress_of = live.run_id
        self.progress = self.live_progress
        self._show_data(self.live_data)
        self.failure.hide()
        self.status.setStyleSheet("")
        self.status.setText("")
        tail = RunFolder(live.folder).log_tail(HISTORY_LOG_LINES) if live.folder else []
        self.console.reset(tail)
        self._show_progress()
        self._update_controls()

    def _show_progress(self) -> None:
        p = self.progress
        if p.total_steps:
            if self.bar.maximum() != p.total_steps:
                self.bar.setRange(0, p.total_steps)
            if self.bar.value() != min(p.step, p.total_steps):
                self.bar.setValue(min(p.step, p.total_steps))  # repaints at once: not too often
            self.bar.setFormat(
                f"step {p.step}/{p.total_steps} · elapsed {duration(p.elapsed_s(time.time()))}"
                f" · ETA {duration(p.eta(time.time()))}"
            )
        elif not (self.busy and self.showing_live):
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setFormat("")
        live = self.busy and self.showing_live
        line = p.status_line(time.time() if live else None) if p.run_id else ""
        if line != self.live_line.text():
            self.live_line.setText(line)
            self.live_line.setCursorPosition(0)
        if live:
            self._show_state(p.state)

    def _show_state(self, state: str) -> None:
        colour = STATE_COLOURS.get(state, "#555555")
        text = f"<b style='color: {colour}'>{state}</b>"
        if text != self.run_state.text():
            self.run_state.setText(text)

    def _show_failure(self, message: str, tail: list[str]) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        lines = "\n".join(tail)
        text = f"Failed: {message}"
        if lines:
            text += f"\nLast lines of its log:\n{lines}"
        self.failure.setText(text)
        self.failure.show()
        self.status.setText("")

    def _show_data(self, data: ChartData) -> None:
        self.data = data
        if self.charts is not None:
            self.charts.show_data(data)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._load_charts()

    @Slot()
    def _load_charts(self) -> None:
        """Create the charts once pyqtgraph is imported (on a task: it takes seconds)."""
        if self.charts is not None or self._charts_task is not None:
            return
        if charts_module() is not None:
            self._charts_ready()
            return
        self.chart_hint.setText("Loading charts…")
        self._charts_task = self._task(
            "loading charts",
            import_charts,
            lambda _m: self._charts_ready(),
            self._say_error,
        )

    def _charts_ready(self) -> None:
        module = charts_module()
        if module is None or self.charts is not None:
            return
        self.charts = module.RunCharts()
        self.chart_area.removeWidget(self.chart_hint)
        self.chart_hint.deleteLater()
        self.chart_area.addWidget(self.charts)
        self.charts.show_data(self.data)

    def _update_controls(self) -> None:
        live = self.live if self.live is not None and self.live.active else None
        can_signal = live is not None and live.pid is not None and not live.ended
        self.stop_button.setEnabled(can_signal and live is not None and not live.stopping)
        self.kill_button.setEnabled(can_signal)
        summary = self.runs_table.summary(self.shown or "")
        self.resume_button.setEnabled(
            live is None
            and summary is not None
            and summary.state in RESUMABLE
            and self.progress_of == summary.run_id
        )

    @Slot(str)
    def _say_error(self, message: str) -> None:
        self.status.setStyleSheet(ERROR_STYLE)
        self.status.setText(message)

    def _task(self, name: str, fn: Any, ok: Any, failed: Any) -> Task:
        task = Task(name, fn, self)
        task.succeeded.connect(ok)
        task.failed.connect(failed)
        task.done.connect(lambda: self._tasks.remove(task))
        self._tasks.append(task)
        task.start()
        return task

    # -- the window's lock -----------------------------------------------------------------------

    def on_lock(self) -> None:
        """Forget the runs, charts and log shown; a followed run trains on in its own process
        (it holds its own keys) and is re-attached on unlock, as at the next start."""
        self.shutdown()
        self.shown = self.progress_of = None
        self.progress, self.live_progress = RunProgress(), RunProgress()
        self.live_data = ChartData()
        self._show_data(ChartData())
        self.console.reset([])
        self.runs_table.show_runs([])
        self.setup.set_choices([], [])
        self.setup.set_blocked("")
        self.run_title.setText("")
        self.status.setStyleSheet("")
        self.status.setText("")
        self.failure.hide()
        self._show_progress()
        self._update_controls()

    def on_unlock(self) -> None:
        self.refresh()

    def vault_tasks(self) -> list[Task]:
        return [t for t in [*self._tasks, *self.setup.vault_tasks()] if t.running]

    def shutdown(self) -> None:
        """The window closes: let a run still followed train on (it is re-attached later)."""
        if self.live is not None and self.live.active:
            self.live.release()
        self.live = None
