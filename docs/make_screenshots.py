"""Render the desktop app and save the screenshots shown in the README and docs.

Run with ``make screenshots`` (offscreen), or under a real X server to see real window
decorations and fonts: ``xvfb-run -a env QT_QPA_PLATFORM=xcb .venv/bin/python
docs/make_screenshots.py --out /tmp/shots``. It builds a throw-away workspace, creates its vault,
lets the window prepare the demo model as on a first start (a GGUF conversion in a child
process), imports a made-up contracts spreadsheet through the import wizard (with a column
mapping and two bad rows), counts its tokens against the demo model (another child) and grabs
each view.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from appliance import offline

offline.enforce()

from PySide6.QtCore import QCoreApplication, QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

from appliance import workspace  # noqa: E402
from appliance.session import Session  # noqa: E402
from appliance.vault import Vault  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from gui.widgets.passphrase_dialog import PassphraseDialog  # noqa: E402

DOCS = Path(__file__).resolve().parent
SIZE = (1280, 860)
TOPICS = ("liability", "termination", "confidentiality", "payment", "warranty", "jurisdiction")
FILLER = (
    "the supplier shall",
    "notwithstanding clause 4.2",
    "save as expressly provided",
    "within thirty days of notice",
    "the customer may",
    "subject to the limits in schedule 3",
    "including any indirect or consequential loss",
    "in writing and signed by both parties",
)


def contracts_csv(path: Path, rows: int = 400) -> Path:
    """A made-up spreadsheet of contract questions: columns that name no format, two bad rows."""
    rng = random.Random(7)  # noqa: S311 (made-up data, not a secret)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clause_id", "question", "clause_text", "reviewer_answer"])
        for i in range(rows):
            topic = rng.choice(TOPICS)
            words = int(min(900, rng.lognormvariate(4.6, 0.7)))
            clause = " ".join(rng.choice(FILLER) for _ in range(max(3, words // 5)))
            answer = f"The {topic} clause {'limits' if i % 3 else 'excludes'} it: " + " ".join(
                rng.choice(FILLER) for _ in range(rng.randint(2, 12))
            )
            if i in (41, 208):
                answer = ""  # a reviewer left it blank: the wizard reports the line
            writer.writerow([f"C-{i:04d}", f"What does the {topic} clause say?", clause, answer])
    return path


def spin(seconds: float) -> None:
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def wait(signal: object, timeout_ms: int) -> None:
    loop = QEventLoop()
    signal.connect(loop.quit)  # type: ignore[attr-defined]
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def wait_until(predicate: object, timeout_s: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


def save(widget: QWidget, out: Path, name: str) -> None:
    QCoreApplication.processEvents()
    path = out / name
    widget.grab().toImage().save(str(path), "PNG", 0)  # quality 0: the strongest compression
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the PNG files")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication(sys.argv[:1])  # noqa: F841 (kept alive while the window exists)
    with tempfile.TemporaryDirectory() as tmp:
        ws, _ = workspace.init(Path(tmp) / "workspace")
        dialog = PassphraseDialog(ws, create=True)
        dialog.show()
        dialog.passphrase.setText("meadow lantern quietly 1987")
        dialog.confirm.setText("meadow lantern quietly 1987")
        save(dialog, out, "passphrase.png")
        dialog.close()

        session = Session(Vault.create(ws, "screenshot passphrase", "alice", target_s=0))
        window = MainWindow(ws.home, session=session)
        window.setWindowTitle("Fine-tuning appliance")
        window.resize(*SIZE)
        window.show()
        window.monitor.start()
        wait(window.monitor.updated, 5000)
        if window.ensure_demo_model():
            wait(window.models_page.imported, 600_000)
        window.show_page("Models")
        save(window, out, "main-window.png")

        page = window.show_page("Datasets")
        source = contracts_csv(Path(tmp) / "contract-review.csv")
        wizard = page.open_wizard(source)  # type: ignore[attr-defined]
        wizard.resize(1000, 760)
        wait_until(lambda: not wizard.busy)
        wizard.set_format("alpaca")
        wait_until(lambda: not wizard.busy)
        wizard.set_mapping(
            {"instruction": "question", "input": "clause_text", "output": "reviewer_answer"}
        )
        wait_until(lambda: not wizard.busy)
        wizard.name_edit.setText("contract-review")
        spin(0.3)
        save(wizard, out, "datasets-wizard.png")
        wizard.skip_box.setChecked(True)
        task = wizard.store()
        wait(task.done, 60_000)

        page.select("contract-review@1")  # type: ignore[attr-defined]
        panel = page.tokens  # type: ignore[attr-defined]
        wait_until(lambda: "Not counted yet" in panel.status.text())
        job = panel.count()
        wait(job.done, 600_000)
        wait_until(lambda: panel.histogram.truncation is not None)
        panel.max_length.setValue(512)
        rows = page.rows_view  # type: ignore[attr-defined]
        rows.selectRow(0)
        spin(0.5)
        save(window, out, "datasets-preview.png")

        window.show_page("Settings")
        settings = window.settings_page
        wait_until(lambda: settings.about.task is not None and not settings.about.task.running)
        wait_until(lambda: settings.usage_task is not None and not settings.usage_task.running)
        spin(0.3)
        save(window, out, "settings.png")
        window.monitor.stop()
        window.close()
        session.lock()


if __name__ == "__main__":
    main()
