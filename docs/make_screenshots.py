"""Render the desktop app offscreen and save the screenshots shown in the README.

Run with ``make screenshots`` (or ``.venv/bin/python docs/make_screenshots.py``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from appliance import offline

offline.enforce()

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from appliance import workspace  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402

DOCS = Path(__file__).resolve().parent
SHOTS = {"Datasets": "main-window.png", "Settings": "settings.png"}


def main() -> None:
    app = QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "workspace"
        workspace.init(home)
        window = MainWindow(home)
        window.setWindowTitle("Fine-tuning appliance")
        window.show()
        window.monitor.start()
        loop = QEventLoop()
        window.monitor.updated.connect(loop.quit)
        QTimer.singleShot(5000, loop.quit)
        loop.exec()
        for page, name in SHOTS.items():
            window.show_page(page)
            app.processEvents()
            window.grab().save(str(DOCS / name))
            print(f"wrote docs/{name}")
        window.monitor.stop()


if __name__ == "__main__":
    main()
