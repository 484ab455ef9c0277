"""Drive the desktop app in a fresh process, then report which heavy libraries it loaded.

The rule "the GUI process never loads torch, transformers, peft or bitsandbytes" cannot be
checked inside pytest (other tests load torch there), so :func:`drive_gui` starts a process of
its own, ``python -m tests.helpers.gui_probe``, that does what ``appliance-gui`` does (unlock the
workspace, build the MainWindow offscreen, start the GPU monitor), runs the named *steps*
through the pages as a person would, closes the window and prints a JSON report: each step's
result and every heavy module in ``sys.modules``.

A page adds its own steps here (train, export, playground...)::

    @step("train")
    def train(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
        page = probe.window.show_page("Train")
        ...  # click, then probe.wait(page.job.done)
        return {"state": ...}

and a test drives them: ``drive_gui(home, PASSPHRASE, [("import-model", {...}), ("train", {})])``.
A step raises :class:`StepFailed` (or any exception) to fail the run with its message.

This module imports nothing from the test fixtures (they load torch).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PySide6.QtCore import SignalInstance

    from appliance.unlocked import UnlockedWorkspace
    from gui.main_window import MainWindow

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
"""The libraries the desktop process must never load (their submodules count too)."""

Step = Callable[["Probe", dict[str, Any]], dict[str, Any]]
STEPS: dict[str, Step] = {}
"""Every step a probe can run, by name."""


class StepFailed(Exception):
    """A step did not see what it expected."""


def step(name: str) -> Callable[[Step], Step]:
    """Register a step under ``name``."""

    def register(fn: Step) -> Step:
        STEPS[name] = fn
        return fn

    return register


@dataclass
class Probe:
    """What a step gets: the window over an unlocked workspace, and ways to wait for it."""

    window: MainWindow
    workspace: UnlockedWorkspace

    def wait(self, signal: SignalInstance, timeout_s: float = 300.0) -> None:
        """Run the event loop until ``signal`` fires (the GUI stays live meanwhile).

        Raises:
            StepFailed: it did not fire in time.
        """
        from PySide6.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        fired: list[bool] = []

        def on_signal(*_args: Any) -> None:
            fired.append(True)
            loop.quit()

        signal.connect(on_signal)
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()
        signal.disconnect(on_signal)
        if not fired:
            raise StepFailed(f"no signal within {timeout_s:g} s")

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
        """Process events until ``predicate()`` holds.

        Raises:
            StepFailed: it did not hold in time.
        """
        from PySide6.QtCore import QCoreApplication, QEventLoop

        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise StepFailed(f"condition not met within {timeout_s:g} s")
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)


# -- steps ---------------------------------------------------------------------------------------


@step("settle-runs")
def settle_runs(probe: Probe, _params: dict[str, Any]) -> dict[str, Any]:
    """What the app does at start: settle runs whose process is gone (a light task)."""
    task = probe.window.settle_runs()
    if task is None:
        raise StepFailed("settle_runs started nothing: no unlocked workspace")
    if task.running:
        probe.wait(task.done)
    if task.error is not None:
        raise StepFailed(f"settling runs failed: {task.error}")
    return {"settled": len(task.result or [])}


@step("import-model")
def import_model(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Import ``params["source"]`` as ``params["name"]`` from the Models page, to its end."""
    page = probe.window.show_page("Models")
    job = page.start_import(Path(params["source"]), params["name"])  # type: ignore[attr-defined]
    probe.wait(job.done, float(params.get("timeout_s", 300)))
    status = page.status.text()  # type: ignore[attr-defined]
    if params["name"] not in page.names():  # type: ignore[attr-defined]
        raise StepFailed(f"the import did not finish: {status}")
    return {"status": status}


@step("train")
def train(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Start a run from the Train page as a person would, and follow it to its end.

    ``params``: ``model``, ``dataset`` (NAME@VERSION), ``adapter``, ``set`` (a list of
    ``key=value`` over the quick-test preset), ``timeout_s``.
    """
    from appliance.training.settings import build_config

    page: Any = probe.window.show_page("Train")
    probe.wait_until(
        lambda: page.charts is not None and page.setup.model_choice.findData(params["model"]) >= 0
    )
    setup = page.setup
    setup.model_choice.setCurrentIndex(setup.model_choice.findData(params["model"]))
    setup.dataset_choice.setCurrentIndex(setup.dataset_choice.findData(params["dataset"]))
    setup.preset_choice.setCurrentText("quick-test")
    setup.form.set_config(build_config("quick-test", params.get("set", [])))
    setup.adapter_name.setText(params["adapter"])
    probe.wait_until(lambda: not setup.preflight_busy)
    if not setup.start_button.isEnabled():
        raise StepFailed(f"Start is disabled: {setup.start_button.toolTip()}")
    setup.start_button.click()
    probe.wait(page.run_settled, float(params.get("timeout_s", 300)))
    run_id = page.shown
    probe.wait_until(lambda: page.runs_table.state_of(run_id) not in (None, "queued", "running"))
    steps, _ = page.charts.series("loss")
    return {
        "state": page.runs_table.state_of(run_id),
        "status": page.status.text(),
        "steps": [int(s) for s in steps],
        "memory_charts": page.charts.memory_titles(),
    }


@step("export")
def export(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Export ``params["adapter"]`` from the Export page as ``params["format"]`` (with
    ``gguf_type`` / ``dtype``) to ``params["out"]``, to its end."""
    page = probe.window.show_page("Export")
    page.choose(params["adapter"])  # type: ignore[attr-defined]
    combo = page.format_combo  # type: ignore[attr-defined]
    combo.setCurrentIndex(combo.findData(params["format"]))
    if params.get("gguf_type"):
        gguf = page.gguf_combo  # type: ignore[attr-defined]
        gguf.setCurrentIndex(gguf.findData(params["gguf_type"]))
    if params.get("dtype"):
        dtype = page.dtype_combo  # type: ignore[attr-defined]
        dtype.setCurrentIndex(dtype.findData(params["dtype"]))
    page.dest_edit.setText(params["out"])  # type: ignore[attr-defined]
    job = page.start_export()  # type: ignore[attr-defined]
    if job is None:
        raise StepFailed(f"the export did not start: {page.status.text()}")  # type: ignore[attr-defined]
    probe.wait(job.done, float(params.get("timeout_s", 600)))
    view = page.result_view  # type: ignore[attr-defined]
    if view.record is None:
        raise StepFailed(f"the export failed: {page.status.text()}")  # type: ignore[attr-defined]
    return {
        "status": page.status.text(),  # type: ignore[attr-defined]
        "record": view.record,
        "stages": dict(page.stage_states),  # type: ignore[attr-defined]
        "commands": [c.command for c in view.commands],
    }


@step("compare")
def compare(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Select ``params["refs"]`` on the Registry page and compare them (curves plotted)."""
    page = probe.window.show_page("Registry")
    page.select(*params["refs"])  # type: ignore[attr-defined]
    task = page.compare_selected()  # type: ignore[attr-defined]
    if task is None:
        raise StepFailed("Compare did not start")
    if task.running:
        probe.wait(task.done)
    view = page.compare_view  # type: ignore[attr-defined]
    if view.comparison is None:
        raise StepFailed(f"no comparison shown: {page.status.text()}")  # type: ignore[attr-defined]
    return {
        "differences": view.shown_config_keys(),
        "curves": sorted(f"{ref} {kind}" for ref, kind in view.curve_items),
    }


@step("import-dataset")
def import_dataset(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Import ``params["source"]`` as ``params["name"]`` through the Datasets page's wizard."""
    page = probe.window.show_page("Datasets")
    wizard = page.open_wizard(Path(params["source"]))  # type: ignore[attr-defined]
    if wizard is None:
        raise StepFailed("the Datasets page opened no wizard")
    probe.wait_until(lambda: not wizard.busy and wizard.preview is not None)
    wizard.name_edit.setText(params["name"])
    task = wizard.store()
    if task is None:
        raise StepFailed(f"the wizard did not store: {wizard.error_label.text()}")
    probe.wait(task.done)
    if task.error:
        raise StepFailed(task.error)
    return {"rows": task.result["rows"], "sha256": task.result["sha256"]}


@step("token-histogram")
def token_histogram(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Count ``params["dataset"]``'s tokens against ``params["model"]`` (a job), draw them."""
    page = probe.window.show_page("Datasets")
    page.refresh_models()  # type: ignore[attr-defined]
    page.select(params["dataset"])  # type: ignore[attr-defined]
    panel = page.tokens  # type: ignore[attr-defined]
    panel.model_box.setCurrentText(params["model"])
    probe.wait_until(lambda: "Not counted yet" in panel.status.text())
    job = panel.count()
    if job is None:
        raise StepFailed("Count tokens started nothing")
    probe.wait(job.done, float(params.get("timeout_s", 300)))
    probe.wait_until(lambda: panel.histogram.truncation is not None)
    panel.max_length.setValue(int(params.get("max_seq_length", 32)))
    cut = panel.histogram.truncation
    caption = panel.histogram.caption.text()
    return {"examples": cut.examples, "truncated": cut.truncated, "caption": caption}


@step("settings")
def settings(probe: Probe, _params: dict[str, Any]) -> dict[str, Any]:
    """Open Settings: sizes, GPUs and the licence list load (none may import torch)."""
    page = probe.window.show_page("Settings")
    probe.wait_until(
        lambda: all(
            t is not None and not t.running
            for t in (page.usage_task, page.gpu_task, page.about.task)  # type: ignore[attr-defined]
        )
    )
    about = page.about  # type: ignore[attr-defined]
    return {"torch": about.versions.get("torch"), "licences": about.table.rowCount()}


@step("playground")
def playground(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Ask ``params["prompt"]`` of base model ``params["base"]`` and adapter ``params["a"]``
    on the Playground page; wait until every answer has streamed in."""
    page = probe.window.show_page("Playground")
    page.choose(params["base"], params.get("a"), params.get("b"))  # type: ignore[attr-defined]
    settings = page.settings_panel  # type: ignore[attr-defined]
    settings.max_new_tokens.setValue(int(params.get("max_new_tokens", 8)))
    page.prompt.setPlainText(params["prompt"])  # type: ignore[attr-defined]
    if not page.send():  # type: ignore[attr-defined]
        raise StepFailed(f"the Playground refused: {page.status.text()}")  # type: ignore[attr-defined]
    timeout_s = float(params.get("timeout_s", 300))
    probe.wait_until(lambda: not page.busy, timeout_s)  # type: ignore[attr-defined]
    columns = {k: c for k, c in page.columns.items() if c.isEnabled()}  # type: ignore[attr-defined]
    figures = {key: column.figures.text() for key, column in columns.items()}
    if not all("tokens/s" in text for text in figures.values()):
        raise StepFailed(f"not every column answered: {page.status.text()}")  # type: ignore[attr-defined]
    return {
        "answers": {key: column.answer_text for key, column in columns.items()},
        "pieces": {key: len(column.pieces) for key, column in columns.items()},
        "figures": figures,
    }


@step("lock")
def lock(probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Lock now, then unlock with ``params["passphrase"]``."""
    window = probe.window
    window.lock_now()
    probe.wait_until(lambda: probe.workspace.locked)
    screen = window.locker.screen  # type: ignore[union-attr]
    screen.passphrase.setText(params["passphrase"])
    screen.submit()
    probe.wait_until(lambda: not probe.workspace.locked)
    return {"locked_then_unlocked": True}


@step("import-module")
def import_module(_probe: Probe, params: dict[str, Any]) -> dict[str, Any]:
    """Import ``params["module"]`` in the GUI process: proves the probe sees what is loaded."""
    importlib.import_module(params["module"])
    return {}


# -- the probe process ---------------------------------------------------------------------------


def heavy_modules() -> list[str]:
    """The heavy libraries (and their submodules) loaded in this process."""
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)


def main() -> int:
    """Read the request on stdin, drive the window, print the report; 1 if a step failed."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from appliance import offline

    offline.enforce()
    from PySide6.QtWidgets import QApplication

    from appliance.unlocked import UnlockedWorkspace
    from appliance.vault import Vault
    from appliance.workspace import open_workspace
    from gui.main_window import MainWindow

    request = json.loads(sys.stdin.readline())
    app = QApplication(sys.argv[:1])
    ws = open_workspace(Path(request["home"]))
    workspace = UnlockedWorkspace(Vault.unlock(ws, request["passphrase"]))
    window = MainWindow(ws.home, workspace=workspace)
    window.monitor.start()
    window.show()
    probe = Probe(window, workspace)
    results: list[dict[str, Any]] = []
    error = ""
    for name, params in request["steps"]:
        try:
            results.append({"step": name, **STEPS[name](probe, params)})
        except Exception as exc:
            traceback.print_exc()
            error = f"step {name}: {type(exc).__name__}: {exc}"
            break
    window.close()
    app.processEvents()
    report = {"results": results, "error": error, "heavy": heavy_modules()}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 1 if error else 0


# -- the test side -------------------------------------------------------------------------------


@dataclass
class GuiReport:
    """What a probe process did and loaded."""

    results: list[dict[str, Any]]
    heavy: list[str]
    """Heavy modules present in the GUI process after the steps (should be empty)."""
    stderr: str = field(repr=False, default="")


def drive_gui(
    home: Path, passphrase: str, steps: list[tuple[str, dict[str, Any]]], timeout_s: float = 900
) -> GuiReport:
    """Run ``steps`` in a fresh desktop process over the workspace ``home``.

    Raises:
        AssertionError: the probe failed (a step, or the process itself), with its stderr.
    """
    unknown = [name for name, _ in steps if name not in STEPS]
    assert not unknown, f"unknown probe steps {unknown}; known: {sorted(STEPS)}"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    request = {"home": str(home), "passphrase": passphrase, "steps": steps}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.gui_probe"],
        input=json.dumps(request) + "\n",
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the probe printed no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(lines[-1])
    assert not report["error"], f"{report['error']}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"the probe exited {proc.returncode}\n{proc.stderr[-4000:]}"
    return GuiReport(report["results"], report["heavy"], proc.stderr)


if __name__ == "__main__":
    sys.exit(main())
