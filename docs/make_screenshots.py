"""Render the desktop app and save the screenshots shown in the README and docs.

Run with ``make screenshots`` (offscreen), or under a real X server to see real window
decorations and fonts: ``xvfb-run -a env QT_QPA_PLATFORM=xcb .venv/bin/python
docs/make_screenshots.py --out /tmp/shots``. It builds a throw-away workspace, creates its vault,
lets the window prepare the demo model as on a first start (a GGUF conversion in a child
process), imports a made-up contracts spreadsheet through the import wizard (with a column
mapping and two bad rows), counts its tokens against the demo model (another child) and grabs
each view. For the Registry and Export pages it imports ``tests/data/orgfacts``, trains two short
runs of the demo model with different settings through the ``appliance`` command (several
minutes on a CPU), compares them, and exports one as GGUF from the Export page.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from appliance import offline

offline.enforce()

from PySide6.QtCore import QCoreApplication, QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

from appliance.unlocked import UnlockedWorkspace  # noqa: E402
from appliance.vault import Vault  # noqa: E402
from appliance.workspace import init as init_workspace  # noqa: E402
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


ORGFACTS = DOCS.parent / "tests" / "data" / "orgfacts" / "orgfacts.jsonl"
RUNS = (
    # Two short runs of the demo model that differ in rank, alpha, learning rate and length.
    ("rank=16", "alpha=32", "lr=2e-3", "max_steps=24"),
    ("rank=8", "alpha=16", "lr=1e-3", "max_steps=12"),
)
COMMON_SETTINGS = (
    "target_modules=all-linear",
    "micro_batch_size=4",
    "warmup_steps=2",
    "eval_every=6",
    "save_every=0",
    "max_seq_length=256",
    "gradient_checkpointing=false",
)


def appliance(home: Path, passphrase: str, *args: str) -> None:
    env = {**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE": passphrase}
    subprocess.run([sys.executable, "-m", "appliance", *args], env=env, check=True)


def train_demo_runs(home: Path, passphrase: str) -> None:
    """Import orgfacts and train the two runs of adapter ``quillmere`` (the CLI's own path)."""
    appliance(home, passphrase, "dataset", "import", str(ORGFACTS), "--name", "orgfacts")
    for settings in RUNS:
        sets = [arg for s in (*COMMON_SETTINGS, *settings) for arg in ("--set", s)]
        appliance(
            home,
            passphrase,
            "train",
            "--model",
            "smollm2-135m-instruct",
            "--dataset",
            "orgfacts",
            "--adapter",
            "quillmere",
            "--preset",
            "quick-test",
            *sets,
        )


def registry_and_export_shots(window: MainWindow, out: Path, exports: Path) -> None:
    """Lineage and compare of the two demo runs, and a verified GGUF export of one."""
    window.resize(1400, 860)  # the registry's tables and curves need the room
    registry = window.registry_page
    window.show_page("Registry")
    registry.select("quillmere@1")
    save(window, out, "registry-lineage.png")
    registry.select("quillmere@1", "quillmere@2")
    task = registry.compare_selected()
    if task is not None and task.running:
        wait(task.done, 60_000)
    axis = registry.compare_view.x_axis
    axis.setCurrentIndex(axis.findData("epoch"))  # the runs differ in length
    save(window, out, "registry-compare.png")
    export = window.export_page
    window.export_version("quillmere@1")
    export.format_combo.setCurrentIndex(export.format_combo.findData("gguf"))
    export.dest_edit.setText(str(exports / "quillmere-1-gguf-q8_0"))
    job = export.start_export()
    if job is None:
        raise SystemExit(f"the export did not start: {export.status.text()}")
    wait(job.done, 900_000)
    if export.result_view.record is None:
        raise SystemExit(f"the export failed: {export.status.text()}")
    save(window, out, "export-result.png")
    window.resize(*SIZE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the PNG files")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication(sys.argv[:1])  # noqa: F841 (kept alive while the window exists)
    with tempfile.TemporaryDirectory() as tmp:
        ws, _ = init_workspace(Path(tmp) / "workspace")
        dialog = PassphraseDialog(ws, create=True)
        dialog.show()
        dialog.passphrase.setText("meadow lantern quietly 1987")
        dialog.confirm.setText("meadow lantern quietly 1987")
        save(dialog, out, "passphrase.png")
        dialog.close()

        workspace = UnlockedWorkspace(
            Vault.create(ws, "screenshot passphrase", "alice", target_s=0)
        )
        window = MainWindow(ws.home, workspace=workspace)
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

        train_demo_runs(ws.home, "screenshot passphrase")
        exports = Path(tmp) / "exports"
        exports.mkdir()
        registry_and_export_shots(window, out, exports)
        window.monitor.stop()
        window.close()
        workspace.lock()


if __name__ == "__main__":
    main()
