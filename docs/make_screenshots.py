"""Render the desktop app and save the screenshots shown in the README.

Run with ``make screenshots`` (offscreen), or under a virtual screen to see real windows:
``xvfb-run -a python docs/make_screenshots.py``. It builds a throw-away workspace, creates its
vault, lets the window prepare the demo model as on a first start, and grabs each page. The
Registry and Export shots need two real training runs of the demo model (imported dataset
``tests/data/orgfacts``, two short runs with different settings, through the ``appliance``
command: several minutes on a CPU) and one GGUF export from the Export page.

``--home DIR`` reuses a workspace (its passphrase in ``APPLIANCE_PASSPHRASE``): steps already
done there (demo model, dataset, runs) are skipped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from appliance import offline

offline.enforce()

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

from appliance import workspace  # noqa: E402
from appliance.registry import Registry  # noqa: E402
from appliance.session import Session  # noqa: E402
from appliance.vault import Vault, has_vault  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from gui.widgets.passphrase_dialog import PassphraseDialog  # noqa: E402

DOCS = Path(__file__).resolve().parent
SHOTS = {"Models": "main-window.png", "Settings": "settings.png"}
PASSPHRASE = "screenshot passphrase"
DATASET = DOCS.parent / "tests" / "data" / "orgfacts" / "orgfacts.jsonl"
RUNS = (
    # Two short runs of the demo model that differ in rank, alpha, learning rate and length.
    ("rank=16", "alpha=32", "lr=2e-3", "max_steps=24"),
    ("rank=8", "alpha=16", "lr=1e-3", "max_steps=12"),
)
COMMON = (
    "target_modules=all-linear",
    "micro_batch_size=4",
    "warmup_steps=2",
    "eval_every=6",
    "save_every=0",
    "max_seq_length=256",
    "gradient_checkpointing=false",
)


def _wait(signal: object, timeout_ms: int) -> None:
    loop = QEventLoop()
    signal.connect(loop.quit)  # type: ignore[attr-defined]
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def _save(widget: QWidget, name: str) -> None:
    QApplication.processEvents()
    widget.grab().save(str(DOCS / name))
    print(f"wrote docs/{name}")


def _appliance(home: Path, passphrase: str, *args: str) -> None:
    env = {**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE": passphrase}
    subprocess.run([sys.executable, "-m", "appliance", *args], env=env, check=True)


def _train_demo_runs(session: Session, passphrase: str) -> None:
    """Import the orgfacts dataset and train the two runs unless the workspace has them."""
    home = session.ws.home
    with session.registry() as reg:
        have_data = bool(reg.dataset_versions("orgfacts"))
        versions = len(reg.adapter_versions("quillmere"))
    if not have_data:
        _appliance(home, passphrase, "dataset", "import", str(DATASET), "--name", "orgfacts")
    for settings in RUNS[versions:]:
        sets = [arg for s in (*COMMON, *settings) for arg in ("--set", s)]
        _appliance(
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


def registry_and_export_shots(window: MainWindow, session: Session, out_root: Path) -> None:
    """Lineage, compare and an export result of the demo runs."""
    window.resize(1400, 860)  # the registry's tables and curves need the room
    registry = window.registry_page
    window.show_page("Registry")
    registry.refresh()
    registry.select("quillmere@1")
    _save(window, "registry-lineage.png")
    registry.select("quillmere@1", "quillmere@2")
    task = registry.compare_selected()
    if task is not None and task.running:
        _wait(task.done, 60_000)
    registry.compare_view.x_axis.setCurrentIndex(registry.compare_view.x_axis.findData("epoch"))
    _save(window, "registry-compare.png")

    export = window.export_page
    window.export_version("quillmere@1")
    export.format_combo.setCurrentIndex(export.format_combo.findData("gguf"))
    out = out_root / "quillmere-1-gguf-q8_0"
    export.dest_edit.setText(str(out))
    job = export.start_export()
    if job is None:
        raise SystemExit(f"the export did not start: {export.status.text()}")
    _wait(job.done, 900_000)
    if export.result_view.record is None:
        raise SystemExit(f"the export failed: {export.status.text()}")
    _save(window, "export-result.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="reuse this workspace")
    args = parser.parse_args()
    app = QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        passphrase = os.environ.get("APPLIANCE_PASSPHRASE", PASSPHRASE)
        if args.home is not None:
            ws = workspace.open_workspace(args.home)
        else:
            ws, _ = workspace.init(Path(tmp) / "workspace")
        if not has_vault(ws):
            dialog = PassphraseDialog(ws, create=True)
            dialog.show()
            _save(dialog, "passphrase.png")
            dialog.close()
            vault = Vault.create(ws, passphrase, "alice", target_s=0)
        else:
            vault = Vault.unlock(ws, passphrase)
        session = Session(vault)
        window = MainWindow(ws.home, session=session)
        window.setWindowTitle("Fine-tuning appliance")
        window.show()
        window.monitor.start()
        _wait(window.monitor.updated, 5000)
        if window.ensure_demo_model():
            _wait(window.models_page.imported, 300_000)
        for page, name in SHOTS.items():
            window.show_page(page)
            _save(window, name)
        _train_demo_runs(session, passphrase)
        with Registry.open(ws) as reg:
            assert len(reg.adapter_versions("quillmere")) >= 2
        exports = Path(tmp) / "exports"
        exports.mkdir()
        registry_and_export_shots(window, session, exports)
        window.monitor.stop()
        window.close()
        app.processEvents()


if __name__ == "__main__":
    main()
