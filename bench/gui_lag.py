"""Desktop responsiveness: the GUI thread's event-loop lag while a run streams into the Train page,
and the time to the first painted window against a bare PySide6 window.

Usage::

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/gui_lag.py [--seconds 20] [--rate 20]
        [--history 200000] [--no-real] [--repeat 3]

Lag: a 5 ms precise timer on the GUI thread records how late each tick fires; the figures are
the lateness's p50, p99 and max, in ms (a blocked event loop shows as one late tick as long as
the block). Scenarios, each in the real window (``MainWindow`` over an unlocked workspace, the
Train page shown, its charts loaded):

* idle window: nothing running (the baseline of this machine and platform);
* run started here, fake child: the page starts a run through its own Start path (task,
  stand-in, QProcess, ``mark_started``, settling) but the worker command is a small program
  that emits a ``started`` event, then ``--rate`` steps a second with a ``memory`` event for two
  GPUs every second and an ``eval`` every 50 steps, for ``--seconds``, then ``stopped``;
* re-attach (with ``--history`` above 0): the same program started in a process of its own, as
  ``appliance train --detach`` does, first writes ``--history`` steps to ``metrics.jsonl``; the
  page then finds the run as a window starting now would (``refresh``) and replays that history
  on a task (measured while it replays), then follows the rest live through
  QFileSystemWatcher (measured apart);
* real run (unless ``--no-real``): a real training child of the tiny random LLaMA (CPU), from
  its ``started`` event to its settling.

The fake-child scenarios check that the charts ended up holding every step. The process shares the
interpreter lock as ``appliance-gui`` does (:func:`gui.app.share_interpreter`).

First paint: fresh processes that build a ``QApplication`` and a bare ``QMainWindow``, or the
appliance's ``MainWindow`` over the same unlocked workspace (the passphrase dialog left out, the
GPU monitor started), and print when the window's first paint event arrives; the wall time from
``Popen`` to that line, median of ``--repeat``, and the ratio.

The workspace (tiny model, small dataset) is built in a child process first, so that torch is
never loaded into this one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PASS = "training test passphrase"
TICK_MS = 5

PREPARE = r"""
import sys
from pathlib import Path
from tests.helpers.models import build_tiny_llama
from tests.helpers.training import make_workspace
root = Path(sys.argv[1])
ws, _ = make_workspace(root, build_tiny_llama(root / "tiny-model"))
print(ws.home)
"""

# The fake worker: argv = run folder, rate, seconds, history, go file ("-": none). Events only;
# reads its keys. With a go file it writes its history, then waits for that file to appear.
FAKE_SOURCE = r"""
import json, sys, time  # appliance.training.worker
import os
folder, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
history, go = int(sys.argv[4]), sys.argv[5]
sys.stdin.readline()
run = folder.rstrip("/").rsplit("/", 1)[-1]
out = sys.stdout
def emit(kind, **fields):
    out.write(json.dumps({"type": kind, "run_id": run, "time": time.time(), **fields}) + "\n")
total = history + int(rate * seconds)
emit("started", model="tiny", dataset="facts@1", device="cuda:0", trainable_params=1,
     total_params=2, total_steps=total)
out.flush()
def step(n):
    emit("step", step=n, total_steps=total, epoch=n / 1000, loss=2.0 / (1 + n / 500),
         lr=2e-4, tokens_per_s=5000.0, eta_s=(total - n) / rate, tokens_seen=n * 512)
for n in range(1, history + 1):
    step(n)
out.flush()
emit("checkpoint", step=history, name="stream-begins")
out.flush()
if go != "-":  # detached: wait until the window has replayed the history
    open(os.path.join(folder, "history-written"), "w").close()
    while not os.path.exists(go):
        time.sleep(0.05)
gib = 2 ** 30
start = time.monotonic()
last_memory = 0.0
n = history
while n < total:
    n += 1
    step(n)
    if n % 50 == 0:
        emit("eval", step=n, eval_loss=2.1 / (1 + n / 500))
    now = time.monotonic()
    if now - last_memory >= 1.0:
        last_memory = now
        gpus = [dict(index=i, name="NVIDIA H200", used=int((20 + i + n % 7) * gib),
                     total=141 * gib, allocated=16 * gib, reserved=18 * gib, peak=17 * gib)
                for i in (0, 1)]
        emit("memory", step=n, gpus=gpus, rss=6 * gib, ram_total=2000 * gib)
    out.flush()
    time.sleep(max(0.0, start + (n - history) / rate - time.monotonic()))
emit("stopped", step=n, checkpoint=None)
out.flush()
"""

FIRST_PAINT = r"""
import os, sys, time
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QApplication, QMainWindow

unlock_s = 0.0

class Painted(QObject):
    def eventFilter(self, watched, event):
        if event.type() == QEvent.Type.Paint:
            print(f"painted {unlock_s}", flush=True)
            os._exit(0)
        return False

app = QApplication(sys.argv[:1])
if sys.argv[1] == "bare":
    window = QMainWindow()
    window.resize(1100, 700)
else:
    from pathlib import Path
    from appliance import offline
    offline.enforce()
    from appliance.unlocked import UnlockedWorkspace
    from appliance.vault import Vault
    from appliance.workspace import open_workspace
    from gui.main_window import MainWindow
    ws = open_workspace(Path(sys.argv[2]))
    began = time.perf_counter()
    vault = Vault.unlock(ws, sys.argv[3])  # the passphrase dialog's key derivation
    unlock_s = time.perf_counter() - began
    window = MainWindow(ws.home, workspace=UnlockedWorkspace(vault))
    window.monitor.start()
watcher = Painted()
window.installEventFilter(watcher)
window.show()
app.exec()
"""


def prepare(root: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-c", PREPARE, str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return Path(done.stdout.strip().splitlines()[-1])


def first_paint(kind: str, home: Path, repeat: int) -> float:
    """Median seconds from Popen to the first paint, the passphrase's key derivation left out."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", FIRST_PAINT, kind, str(home), PASS],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        elapsed = time.perf_counter() - start
        proc.wait(timeout=60)
        if not line or line[0] != "painted":
            raise SystemExit(f"the {kind} window never painted")
        times.append(elapsed - float(line[1]))
    return statistics.median(times)


class LagMeter:
    """Records how late a 5 ms precise timer fires on the GUI thread."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.samples: list[float] = []
        self.recording = False
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.recording:
            self.samples.append(max(0.0, (now - self._last) * 1000 - TICK_MS))
        self._last = now

    def take(self) -> list[float]:
        samples, self.samples = self.samples, []
        return samples


def spin(seconds: float, until: Any = None) -> None:
    from PySide6.QtCore import QCoreApplication, QEventLoop

    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until is not None and until()):
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)


def figures(samples: list[float]) -> dict[str, float]:
    import numpy as np

    data = np.asarray(samples or [0.0])
    return {
        "ticks": float(len(samples)),
        "p50": float(np.percentile(data, 50)),
        "p99": float(np.percentile(data, 99)),
        "max": float(data.max()),
    }


def rate_of(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def check_steps(page: Any, expected: int) -> None:
    steps, _ = page.charts.series("loss")
    if len(steps) != expected:
        raise SystemExit(f"the charts hold {len(steps)} steps, not {expected}")


def measure(args: argparse.Namespace, home: Path) -> list[tuple[str, float, dict[str, float]]]:
    from PySide6.QtWidgets import QApplication

    from appliance import offline

    offline.enforce()
    from appliance.fsutil import open_append
    from appliance.training import events as ev
    from appliance.training import runs
    from appliance.training.settings import build_config
    from appliance.unlocked import UnlockedWorkspace
    from appliance.vault import Vault
    from appliance.workspace import open_workspace
    from gui.app import share_interpreter
    from gui.main_window import MainWindow

    share_interpreter()  # as appliance-gui does
    app = QApplication(sys.argv[:1])
    ws = open_workspace(home)
    window = MainWindow(ws.home, workspace=UnlockedWorkspace(Vault.unlock(ws, PASS)))
    window.resize(1280, 820)
    window.monitor.start()
    window.show()
    page: Any = window.show_page("Train")
    spin(120, lambda: page.charts is not None and page.setup.model_choice.count() > 0)
    meter = LagMeter()
    results = []

    meter.recording = True
    spin(3)
    meter.recording = False
    results.append(("idle window", 0.0, figures(meter.take())))

    def start(adapter: str, *sets: str) -> None:
        page.setup.preset_choice.setCurrentText("quick-test")
        page.setup.form.set_config(build_config("quick-test", ["max_seq_length=128", *sets]))
        page.setup.adapter_name.setText(adapter)
        spin(10, lambda: not page.setup.preflight_busy)
        before = page.live
        page.start()
        spin(60, lambda: page.live is not None and page.live is not before)

    # 1. A run started from the page whose child streams events (the fake source).
    real_command = runs.worker_command
    # The real worker_command's parameters, so a caller passing threads= by keyword still works.
    runs.worker_command = lambda folder, threads=None: [  # noqa: ARG005
        sys.executable, "-c", FAKE_SOURCE, str(folder), str(args.rate), str(args.seconds), "0", "-",
    ]  # fmt: skip
    settled: list[Any] = []
    page.run_settled.connect(settled.append)
    start("fake")
    streamed_at: list[float] = []

    def on_event(event: Any) -> None:
        if isinstance(event, ev.Started):
            meter.recording = True
        elif meter.recording:
            streamed_at.append(time.monotonic())

    page.live.event_received.connect(on_event)
    spin(args.seconds * 3 + 300, lambda: bool(settled))
    meter.recording = False
    page.run_settled.disconnect(settled.append)
    results.append(("run started here, fake child", rate_of(streamed_at), figures(meter.take())))
    check_steps(page, int(args.rate * args.seconds))
    runs.worker_command = real_command

    # 2. A run with a long history, running in a process of its own: replayed, then followed.
    if args.history:
        workspace = window.workspace
        assert workspace is not None
        with workspace.registry() as reg:
            run_id = runs.create_run(
                workspace.vault, reg, model="tiny", dataset="facts", adapter_name="attached",
                config=build_config("quick-test", ["max_seq_length=128"]),
            )  # fmt: skip
            plan = runs.prepare_launch(workspace.vault, reg, run_id)
            go = plan.folder / "go"
            fd = open_append(plan.folder / "metrics.jsonl")
            worker = subprocess.Popen(
                [
                    sys.executable, "-c", FAKE_SOURCE, str(plan.folder), str(args.rate),
                    str(args.seconds), str(args.history), str(go),
                ],
                stdin=subprocess.DEVNULL, stdout=fd, start_new_session=True,
            )  # fmt: skip
            os.close(fd)
            runs.mark_started(workspace.vault, reg, plan, worker.pid)
        spin(300, lambda: (plan.folder / "history-written").exists())
        loaded: list[str] = []
        page.history_loaded.connect(loaded.append)
        settled = []
        page.run_settled.connect(settled.append)
        meter.recording = True
        page.refresh()  # what a window starting now does: the run is re-attached
        spin(900, lambda: bool(loaded))
        results.append(
            (f"re-attach: replay of {args.history:,} steps (task)", 0.0, figures(meter.take()))
        )
        streamed_at.clear()
        page.live.event_received.connect(lambda _e: streamed_at.append(time.monotonic()))
        go.touch()
        spin(args.seconds * 3 + 300, lambda: bool(settled))
        meter.recording = False
        worker.wait(timeout=60)
        results.append(
            (f"  then followed live ({args.history:,}-step history)", rate_of(streamed_at),
             figures(meter.take()))
        )  # fmt: skip
        check_steps(page, args.history + int(args.rate * args.seconds))

    if args.real:
        settled = []
        page.run_settled.connect(settled.append)
        start("real", "max_steps=30", "eval_every=10", "save_every=10")
        events: list[float] = []

        def on_real(event: Any) -> None:
            if isinstance(event, ev.Started):
                meter.recording = True
            if meter.recording:
                events.append(time.monotonic())

        page.live.event_received.connect(on_real)
        spin(900, lambda: bool(settled))
        meter.recording = False
        results.append(("real tiny run (CPU child)", rate_of(events), figures(meter.take())))
        if settled[0].state != "finished":
            raise SystemExit(f"the real run ended {settled[0].state}: {settled[0].message}")
    window.train_page.shutdown()
    window.monitor.stop()
    window.close()
    app.processEvents()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0, help="steps a second (fake source)")
    parser.add_argument("--history", type=int, default=200_000, help="steps poured out first")
    parser.add_argument("--no-real", dest="real", action="store_false", help="skip the real run")
    parser.add_argument("--repeat", type=int, default=3, help="first-paint measurements")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory(prefix="gui-lag-") as tmp:
        home = prepare(Path(tmp))
        bare = first_paint("bare", home, args.repeat)
        appliance = first_paint("appliance", home, args.repeat)
        results = measure(args, home)
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    print(f"GUI thread lag ({platform or 'default'} platform, {os.cpu_count()} CPUs; ms)")
    print(f"{'scenario':52} {'events/s':>8} {'ticks':>6} {'p50':>6} {'p99':>6} {'max':>6}")
    for name, rate, f in results:
        print(
            f"{name:52} {rate:8.1f} {f['ticks']:6.0f} {f['p50']:6.1f} {f['p99']:6.1f} "
            f"{f['max']:6.1f}"
        )
    print(
        f"first painted window: bare PySide6 {bare:.2f} s, appliance {appliance:.2f} s "
        f"({appliance / bare:.2f}x; the passphrase's key derivation left out)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "lag_ms": {name: {**f, "events_per_s": rate} for name, rate, f in results},
                    "first_paint_s": {"bare": bare, "appliance": appliance},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
