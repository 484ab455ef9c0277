"""Render the Registry page with a version's evaluations under its lineage, scored from the page.

Needs a workspace with two versions of an adapter whose name has a golden set and a version in
production, e.g. the README quickstart's ``quillmere`` after::

    appliance adapter golden quillmere --dataset orgfacts@1
    appliance eval quillmere@1 --dataset orgfacts@1 --split all
    appliance adapter tag quillmere@1 production

Then::

    APPLIANCE_PASSPHRASE=... xvfb-run -a env QT_QPA_PLATFORM=xcb .venv/bin/python \\
        docs/registry_evaluations_screenshot.py --home WS --version quillmere@2 \\
        --dataset orgfacts@1 --out docs/registry-evaluations.png

It evaluates the version on the dataset's held-out rows from the page (an ``eval`` child, a
minute or two on a CPU); with ``--promote`` it then presses Promote to production: the gate
scores what it lacks and passes or refuses with both figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from appliance import offline

offline.enforce()

from PySide6.QtCore import QCoreApplication, QEventLoop  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from appliance.unlocked import UnlockedWorkspace  # noqa: E402
from appliance.vault import Vault  # noqa: E402
from appliance.workspace import open_workspace  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402

SIZE = (1400, 900)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 1800) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("the evaluation did not end in time")
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="workspace with the adapter")
    parser.add_argument("--version", default="quillmere@2", help="adapter version to show")
    parser.add_argument("--dataset", default="orgfacts@1", help="dataset version to score on")
    parser.add_argument("--out", type=Path, default=Path("docs/registry-evaluations.png"))
    parser.add_argument(
        "--promote", action="store_true", help="then press Promote to production (scores first)"
    )
    args = parser.parse_args()
    passphrase = os.environ.get("APPLIANCE_PASSPHRASE")
    if not passphrase:
        sys.exit("set APPLIANCE_PASSPHRASE to the workspace's passphrase")
    app = QApplication(sys.argv[:1])
    ws = open_workspace(args.home)
    workspace = UnlockedWorkspace(Vault.unlock(ws, passphrase))
    window = MainWindow(ws.home, workspace=workspace)
    window.setWindowTitle("Fine-tuning appliance")
    window.resize(*SIZE)
    window.show()
    window.show_page("Registry")
    page = window.registry_page
    page.select(args.version)
    panel = page.evaluations
    runner = panel.runner
    runner.dataset_box.setCurrentText(args.dataset)
    if runner.start() is None:
        sys.exit(runner.status.text())
    wait_until(lambda: not runner.running)
    promote = panel.promote
    if args.promote:
        if promote.promote() is None:
            sys.exit(promote.status.text())
        wait_until(lambda: not promote.busy)
    for _ in range(20):
        app.processEvents()
    window.grab().save(str(args.out))
    print(f"saved {args.out}: {runner.status.text()} | {promote.status.text()}")
    window.close()
    workspace.lock()


if __name__ == "__main__":
    main()
