"""Render the Playground answering a question with a base model and an adapter side by side.

Needs a workspace with a trained adapter, e.g. the README quickstart's ``quillmere``::

    APPLIANCE_PASSPHRASE=... xvfb-run -a env QT_QPA_PLATFORM=xcb .venv/bin/python \\
        docs/playground_screenshot.py --home WS --adapter quillmere@1 --out docs/playground.png

The model runs in its own process, as in the app (a minute or two on a CPU).
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
from gui.pages.playground import PlaygroundPage  # noqa: E402

SIZE = (1360, 800)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("the answers did not come in time")
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="workspace with the adapter")
    parser.add_argument("--adapter", default="quillmere@1", help="adapter version for column A")
    parser.add_argument("--question", default="Who created the Quillmere Institute?")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    args = parser.parse_args()
    passphrase = os.environ.get("APPLIANCE_PASSPHRASE")
    if not passphrase:
        sys.exit("set APPLIANCE_PASSPHRASE to the workspace's passphrase")
    app = QApplication(sys.argv[:1])
    ws = open_workspace(args.home)
    workspace = UnlockedWorkspace(Vault.unlock(ws, passphrase))
    window = MainWindow(ws.home, workspace=workspace)
    window.resize(*SIZE)
    window.show()
    page = window.show_page("Playground")
    assert isinstance(page, PlaygroundPage)
    with workspace.registry() as reg:
        base = reg.adapters.lineage(args.adapter)["base_model"]["name"]
    page.choose(base, args.adapter, None)
    page.settings_panel.max_new_tokens.setValue(args.max_new_tokens)
    page.prompt.setPlainText(args.question)
    if not page.send():
        sys.exit(page.status.text())
    wait_until(lambda: not page.busy)
    for _ in range(20):
        app.processEvents()
    window.grab().save(str(args.out))
    print(f"saved {args.out}: {page.status.text()}")
    window.close()


if __name__ == "__main__":
    main()
