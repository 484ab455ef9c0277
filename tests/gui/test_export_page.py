"""The Export page over a real workspace: exports in a real child, Cancel, a failed
verification, and every refusal before a child is started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from appliance import adapters, destinations
from appliance.export import card, preflight
from appliance.registry import Registry
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.verify import verify_workspace
from gui.pages.export import ExportPage
from tests.helpers.adapters import make_adapter, tiny_adapter_store
from tests.helpers.tables import table_item

WAIT_MS = 300_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Vault:
    torch.set_num_threads(1)
    vault, reg, _ref = tiny_adapter_store(tmp_path_factory.mktemp("export-page"), tiny_llama)
    reg.close()
    return vault


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    return folder


def _page(qtbot: QtBot, vault: Vault) -> ExportPage:
    page = ExportPage(UnlockedWorkspace(vault))
    qtbot.addWidget(page)
    page.show()
    return page


def _fill(page: ExportPage, out: Path, fmt: str = "merged", *, dtype: str | None = None) -> None:
    page.choose("legal@1")
    page.format_combo.setCurrentIndex(page.format_combo.findData(fmt))
    if dtype is not None:
        page.dtype_combo.setCurrentIndex(page.dtype_combo.findData(dtype))
    page.dest_edit.setText(str(out))
    page.update_plan()


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_merged_export_runs_in_a_child_and_shows_its_proof(
    qtbot: QtBot, store: Vault, exports: Path
) -> None:
    page = _page(qtbot, store)
    assert page.version_combo.currentText() == "legal@1"
    out = exports / "legal-1-merged"
    _fill(page, out, dtype="fp32")
    assert page.plan is not None
    assert page.plan_label.text().startswith(f"Will write {out}: about ")
    assert " free in " in page.plan_label.text()
    seen: list[dict[str, str]] = []
    job = page.start_export()
    assert job is not None
    job.progress.connect(lambda *_: seen.append(dict(page.stage_states)))
    assert not page.start_button.isEnabled()
    assert page.cancel_button.isEnabled()
    assert job.child.pid != os.getpid()
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        pass
    assert page.status.text() == f"Exported and verified legal@1 to {out}."
    # Each stage was active in turn, and all are done at the end.
    active = [next(k for k, v in states.items() if v == "active") for states in seen]
    assert [k for i, k in enumerate(active) if i == 0 or active[i - 1] != k] == [
        "load",
        "merge",
        "write",
        "verify",
    ]
    assert set(page.stage_states.values()) == {"done"}
    record = page.result_view.record
    assert record is not None
    figures = record["verification"]
    assert figures["passed"] is True
    assert figures["greedy_tokens_matching"] == figures["greedy_tokens"]
    shown = {
        table_item(page.result_view.figures, r, 0).text(): table_item(
            page.result_view.figures, r, 1
        ).text()
        for r in range(page.result_view.figures.rowCount())
    }
    assert shown["max |Δlogit|"].endswith("✔")
    assert shown["greedy tokens agreeing"] == f"{figures['greedy_tokens']}/" + (
        f"{figures['greedy_tokens']} (all required) ✔"
    )
    # The files exist, match their MANIFEST, and verify as the registry recorded them.
    assert card.check_manifest(out) == []
    listed = [
        table_item(page.result_view.files, r, 0).text()
        for r in range(page.result_view.files.rowCount())
    ]
    assert sorted(listed) == sorted(set(record["files"]) - {"MANIFEST"})
    with Registry.open(store.ws, audit_key=store.audit_key) as reg:
        report = verify_workspace(store.ws, reg)
    exports_section = next(s for s in report.sections if s.title.startswith("exports"))
    assert exports_section.checked >= 1
    assert exports_section.findings == []
    # Serving: the command for what was written, on the clipboard.
    assert page.result_view.copy_command() == (
        f"HF_HUB_OFFLINE=1 vllm serve {out} --served-model-name legal"
    )
    assert QGuiApplication.clipboard().text().startswith("HF_HUB_OFFLINE=1 vllm serve")
    # The history lists it; the form asks for a new folder for the next export.
    assert page.history_table.rowCount() >= 1
    assert table_item(page.history_table, 0, 2).text() == str(out)
    assert table_item(page.history_table, 0, 3).text().startswith("✔ verified (max |Δlogit| ")
    assert page.start_button.isEnabled()


def test_cancel_mid_export_leaves_the_destination_empty(
    qtbot: QtBot, store: Vault, exports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny model merges in a blink: the child's merge waits first (a hook, as below), so the
    # cancel always lands in the merge stage, before the point of no return, not after it.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time\n"
        "from appliance.export import merge\n"
        "_save = merge.save_merged\n"
        "def _slow(*args, **kwargs):\n"
        "    time.sleep(60)\n"
        "    return _save(*args, **kwargs)\n"
        "merge.save_merged = _slow\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    page = _page(qtbot, store)
    out = exports / "legal-1-cancelled"
    out.mkdir()  # an empty folder the user made for it
    _fill(page, out, dtype="fp32")
    job = page.start_export()
    assert job is not None
    # Past loading the base (the staging folder exists and torch is in the child): cancel.
    qtbot.waitUntil(lambda: page.stage_states["merge"] == "active", timeout=WAIT_MS)
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
        assert not page.cancel_button.isEnabled()
    assert job.outcome is not None
    assert job.outcome.exit_code == 130  # the child cleaned up and reported
    assert page.status.text() == "Export cancelled; nothing was left in the destination."
    assert _left(exports) == ["legal-1-cancelled"]  # no staging folder beside it
    assert _left(out) == []
    assert page.result_view.isHidden()
    with Registry.open(store.ws) as reg:
        assert [e for e in reg.exports.all() if e["path"] == str(out)] == []
    with store.ws.writer("test", wait_s=0):
        pass  # the child released the writer lock
    assert page.start_button.isEnabled()


def test_failed_verification_shows_the_figures_and_leaves_nothing(
    qtbot: QtBot, store: Vault, exports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The export child starts with a hook that makes every tolerance negative, so the real
    # figures fail: the page must show them as a failure, with nothing left behind.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "from appliance.export import verify\nverify.tolerance = lambda *args, **kwargs: -1.0\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    page = _page(qtbot, store)
    out = exports / "legal-1-adapter"
    _fill(page, out, "adapter")
    job = page.start_export()
    assert job is not None
    assert page.stage_states["merge"] == "skipped"
    with qtbot.waitSignal(job.done, timeout=WAIT_MS):
        pass
    headline = page.result_view.headline.text()
    assert "Export failed" in headline
    assert "failed verification (max |Δlogit| " in headline
    assert "Nothing was left in the destination." in headline
    first = table_item(page.result_view.figures, 0, 1).text()
    assert table_item(page.result_view.figures, 0, 0).text() == "max |Δlogit|"
    assert first.endswith("(tolerance -1) ✘")
    assert not page.result_view.open_button.isEnabled()
    assert page.status.text().startswith("Export failed: the adapter export of legal@1 failed")
    assert _left(exports) == []
    history = [
        table_item(page.history_table, r, 3).text() for r in range(page.history_table.rowCount())
    ]
    assert "✘ failed verification (removed)" in history


def test_refusals_are_shown_before_any_child_starts(
    qtbot: QtBot,
    store: Vault,
    exports: Path,
    tiny_llama: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    page = _page(qtbot, store)

    def refused(out: Path) -> str:
        _fill(page, out)
        assert page.start_export() is None
        assert page.job is None
        text = page.status.text()
        assert text.startswith("Not started: ")
        assert "\n" not in text
        return text

    a_file = exports / "notes.txt"
    a_file.write_text("keep me")
    assert str(a_file) in refused(a_file)
    # Enter in the form starts (here: is refused, and says why), as the Start button would.
    page.status.clear()
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    page.dest_edit.setFocus()
    qtbot.keyClick(page.dest_edit, Qt.Key.Key_Return)
    assert page.status.text().startswith(f"Not started: {a_file} is a file")
    full = exports / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep me too")
    assert str(full) in refused(full)
    locked = exports / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: let the check see what a user would
        real_access = os.access
        monkeypatch.setattr(
            destinations.os,
            "access",
            lambda p, mode: False if Path(p) == locked else real_access(p, mode),
        )
    assert f"cannot write in {locked}" in refused(locked / "out")
    monkeypatch.undo()

    class Usage:
        free = 4096

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: Usage())
    small = refused(exports / "too-big")
    assert f"not enough disk space in {exports}" in small
    assert "4.0 KiB are free" in small
    assert page.plan_label.text() == small.removeprefix("Not started: ")
    monkeypatch.undo()

    # A version deleted after the page listed it.
    with Registry.open(store.ws, audit_key=store.audit_key) as reg:
        make_adapter(store, reg, tiny_llama, adapter_name="doomed")
    page.refresh()
    page.choose("doomed@1")
    page.dest_edit.setText(str(exports / "doomed"))
    with Registry.open(store.ws, audit_key=store.audit_key) as reg, store.ws.writer("test"):
        adapters.delete_version(store.ws, reg, "doomed@1")
    assert page.start_export() is None
    assert page.status.text().startswith("Not started: adapter doomed@1 was deleted at ")
    locked.chmod(0o700)
    assert _left(exports) == ["full", "locked", "notes.txt"]
    assert _left(full) == ["mine.txt"]
    assert a_file.read_text() == "keep me"
    assert _left(locked) == []
