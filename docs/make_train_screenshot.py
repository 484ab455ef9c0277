"""Screenshot of the Train page during a real run of the demo model (docs/train-page.png).

Usage::

    .venv/bin/python docs/make_train_screenshot.py [--home DIR] [--out docs/train-page.png]
        [--at-step 24] [--leave-running]
    xvfb-run -a env QT_QPA_PLATFORM=xcb .venv/bin/python docs/make_train_screenshot.py ...

Builds (or reuses, with ``--home``) a throw-away workspace, imports the demo model
SmolLM2-135M-Instruct through the Models page as a first start does, imports the made-up facts
of ``tests/data/orgfacts/orgfacts.jsonl``, then sets up a short run on the Train page as a
person would (the quick-test preset, a few settings typed into the form), clicks Start, and
grabs the window once the run has passed ``--at-step`` with its evaluations drawn. The run is
then stopped (it checkpoints) so that the script ends promptly, or, with ``--leave-running``,
left training in its own process as when a window closes with "keep training".

A run of the workspace that trains already (left running, or started with
``appliance train --detach``) is re-attached by the page as the window opens; then that run is
shown instead of a new one (so an offscreen and an Xvfb grab can share one run of CPU minutes:
the first with ``--leave-running``). Offscreen by default; a real window under Xvfb with
``QT_QPA_PLATFORM=xcb``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from appliance import offline

offline.enforce()

from PySide6.QtCore import QCoreApplication, QEventLoop  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from appliance import datasets, workspace  # noqa: E402
from appliance.demo import DEMO_MODEL_NAME  # noqa: E402
from appliance.registry import Registry  # noqa: E402
from appliance.training.settings import build_config  # noqa: E402
from appliance.unlocked import UnlockedWorkspace  # noqa: E402
from appliance.vault import Vault, has_vault  # noqa: E402
from gui.app import share_interpreter  # noqa: E402
from gui.live_run import Settled  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402

DOCS = Path(__file__).resolve().parent
ORGFACTS = DOCS.parent / "tests" / "data" / "orgfacts" / "orgfacts.jsonl"
PASSPHRASE = "screenshot passphrase"
SETTINGS = [
    "target_modules=all-linear",
    "rank=16",
    "alpha=32",
    "max_steps=36",
    "micro_batch_size=4",
    "lr=2e-3",
    "warmup_steps=2",
    "eval_every=6",
    "save_every=12",
    "max_seq_length=256",
    "gradient_checkpointing=false",
]


def spin(seconds: float, until: Callable[[], bool] | None = None) -> None:
    """Run the event loop for ``seconds`` or until ``until()`` holds."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until is not None and until()):
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="workspace to make or reuse")
    parser.add_argument("--out", type=Path, default=DOCS / "train-page.png")
    parser.add_argument("--at-step", type=int, default=24)
    parser.add_argument("--size", default="1440x860")
    parser.add_argument(
        "--leave-running", action="store_true", help="let the run train on when the script ends"
    )
    args = parser.parse_args()
    share_interpreter()
    app = QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp) / "workspace"
        ws, _ = workspace.init(home)
        if has_vault(ws):
            vault = Vault.unlock(ws, PASSPHRASE)
        else:
            vault = Vault.create(ws, PASSPHRASE, "alice", target_s=0)
        with Registry.open(ws, audit_key=vault.audit_key) as reg:
            if not reg.datasets.versions("orgfacts"):
                datasets.import_file(vault, reg, ORGFACTS, "orgfacts")
        window = MainWindow(ws.home, workspace=UnlockedWorkspace(vault))
        window.setWindowTitle("Fine-tuning appliance")
        width, height = (int(v) for v in args.size.split("x"))
        window.resize(width, height)
        window.show()
        window.monitor.start()
        if window.ensure_demo_model():
            print("importing the demo model…", flush=True)
            spin(900, lambda: DEMO_MODEL_NAME in window.models_page.names())
        window.show_page("Train")
        page, setup = window.train_page, window.train_page.setup

        def demo_listed() -> bool:
            return bool(setup.model_choice.findData(DEMO_MODEL_NAME) >= 0)

        listed: list[None] = []  # the window's first reading of the runs (it re-attaches)
        page.runs_listed.connect(lambda: listed.append(None))
        spin(120, lambda: page.charts is not None and demo_listed() and bool(listed))
        settled: list[Settled] = []
        page.run_settled.connect(settled.append)
        if any(run.live for run in page.runs_table.summaries):
            spin(120, lambda: page.busy)  # re-attached: its history is replayed, then followed
            print(f"following run {page.shown}, which trains already…", flush=True)
        else:
            setup.model_choice.setCurrentIndex(setup.model_choice.findData(DEMO_MODEL_NAME))
            setup.dataset_choice.setCurrentIndex(setup.dataset_choice.findData("orgfacts@1"))
            setup.preset_choice.setCurrentText("quick-test")
            setup.form.set_config(build_config("quick-test", SETTINGS))
            setup.adapter_name.setText("quillmere")
            spin(30, lambda: not setup.preflight_busy)
            if not setup.start_button.isEnabled():
                raise SystemExit(f"Start is disabled: {setup.message.text()}")
            setup.start_button.click()
            print("training…", flush=True)
        spin(1800, lambda: page.progress.step >= args.at_step or bool(settled))
        if settled:
            raise SystemExit(f"the run ended {settled[0].state}: {settled[0].message}")
        spin(1.5)  # the charts' next redraw
        page.tabs.setCurrentIndex(0)
        image = window.grab().toImage()
        if not image.save(str(args.out)):
            raise SystemExit(f"could not write {args.out}")
        print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) at step {page.progress.step}")
        if not args.leave_running:
            page.stop()
            spin(600, lambda: not page.busy)
        window.monitor.stop()
        window.train_page.shutdown()
        window.close()
        app.processEvents()


if __name__ == "__main__":
    main()
