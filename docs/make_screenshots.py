"""Render the desktop app offscreen and save the screenshots shown in the README.

Run with ``make screenshots``. It builds a throw-away workspace, creates its vault, lets the
window prepare the demo model as on a first start, and grabs each page.
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
from appliance.session import Session  # noqa: E402
from appliance.vault import Vault  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from gui.widgets.passphrase_dialog import PassphraseDialog  # noqa: E402

DOCS = Path(__file__).resolve().parent
SHOTS = {"Models": "main-window.png", "Settings": "settings.png"}


def _wait(signal: object, timeout_ms: int) -> None:
    loop = QEventLoop()
    signal.connect(loop.quit)  # type: ignore[attr-defined]
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def main() -> None:
    app = QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        ws, _ = workspace.init(Path(tmp) / "workspace")
        dialog = PassphraseDialog(ws, create=True)
        dialog.show()
        app.processEvents()
        dialog.grab().save(str(DOCS / "passphrase.png"))
        print("wrote docs/passphrase.png")
        dialog.close()

        session = Session(Vault.create(ws, "screenshot passphrase", "alice", target_s=0))
        window = MainWindow(ws.home, session=session)
        window.setWindowTitle("Fine-tuning appliance")
        window.show()
        window.monitor.start()
        _wait(window.monitor.updated, 5000)
        if window.ensure_demo_model():
            _wait(window.models_page.imported, 300_000)
        for page, name in SHOTS.items():
            window.show_page(page)
            app.processEvents()
            window.grab().save(str(DOCS / name))
            print(f"wrote docs/{name}")
        window.monitor.stop()


if __name__ == "__main__":
    main()
