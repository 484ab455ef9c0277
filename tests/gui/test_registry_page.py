"""The Registry page over real workspaces: compare real runs, tag (checked with the CLI),
delete, lineage links, and the audit view's Verify against a row edited with sqlite3."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt, QUrl
from PySide6.QtWidgets import QDialogButtonBox, QMessageBox
from pytestqt.qtbot import QtBot

from appliance import workspace
from appliance.models import import_model
from appliance.registry import Registry
from appliance.session import Session
from appliance.training import events as ev
from appliance.vault import Vault
from gui.main_window import MainWindow
from gui.pages.registry import RegistryPage
from gui.widgets import audit_view
from tests.helpers.cli import CliRunner
from tests.helpers.registry_data import add_adapter, add_dataset
from tests.helpers.training import make_workspace, run_folder, tiny_config, train_adapter

WAIT_MS = 120_000
PASS = "registry page passphrase"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Vault:
    """Two versions of ``facts-adapter`` trained for real on the tiny model, with different
    learning rates and LoRA ranks."""
    torch.set_num_threads(1)
    _ws, vault = make_workspace(tmp_path_factory.mktemp("registry-page"), tiny_llama)
    common = ("max_steps=6", "eval_every=3", "save_every=0")
    train_adapter(vault, tiny_config(*common))
    train_adapter(vault, tiny_config(*common, "lr=5e-3", "lora.rank=16"))
    return vault


@pytest.fixture
def light(tmp_path: Path, tiny_llama: Path) -> Vault:
    """A workspace with the tiny base and three registered versions of ``contracts`` (their
    weights are placeholder bytes: enough for the registry, not for an export)."""
    ws, _ = workspace.init(tmp_path / "ws")
    vault = Vault.create(ws, PASS, "alice", target_s=0)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        import_model(ws, reg, tiny_llama, "tiny")
        add_dataset(reg, "docs", path=None)
        for n in range(3):
            add_adapter(reg, "contracts", base="tiny", content=f"weights {n}".encode())
    return vault


def _page(qtbot: QtBot, vault: Vault) -> RegistryPage:
    page = RegistryPage(Session(vault))
    qtbot.addWidget(page)
    page.resize(1300, 800)
    page.show()
    return page


def test_compare_shows_exactly_the_changed_settings_and_both_curves(
    qtbot: QtBot, trained: Vault
) -> None:
    page = _page(qtbot, trained)
    assert [item.text(0) for item in page.version_items()] == ["@2", "@1"]
    page.select("facts-adapter@1", "facts-adapter@2")
    assert page.compare_button.isEnabled()
    with qtbot.waitSignal(page.compared, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(page.compare_button, Qt.MouseButton.LeftButton)
    comparison = blocker.args[0]
    assert comparison is not None
    view = page.compare_view
    assert page.tabs.currentWidget() is view
    assert comparison.refs == ("facts-adapter@1", "facts-adapter@2")
    assert view.shown_config_keys() == ["lora.rank", "optim.learning_rate"]
    cells = [
        [view.config_table.item(r, c).text() for c in range(2)]
        for r in range(view.config_table.rowCount())
    ]
    assert cells == [["8", "16"], ["0.01", "0.005"]]
    assert "same base model: <b>yes</b>" in view.summary.text()
    assert "same data: <b>yes</b>" in view.summary.text()
    view.differences_only.setChecked(False)
    assert len(view.shown_config_keys()) > 10
    assert "schedule.max_steps" in view.shown_config_keys()

    # Both runs' curves, with every point of their metrics.jsonl.
    with Registry.open(trained.ws) as reg:
        runs = [reg.adapter_version(ref)["run_id"] for ref in comparison.refs]
    for ref, run_id in zip(comparison.refs, runs, strict=True):
        events = list(ev.replay(run_folder(trained, run_id) / ev.METRICS_FILE))
        steps = [e for e in events if isinstance(e, ev.Step)]
        evals = [e for e in events if isinstance(e, ev.Eval)]
        xs, ys = view.curve_items[(ref, "train")].getData()
        assert list(xs) == [float(s.step) for s in steps] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        assert list(ys) == pytest.approx([s.loss for s in steps])
        exs, eys = view.curve_items[(ref, "eval")].getData()
        assert list(exs) == [float(e.step) for e in evals] == [0.0, 3.0, 6.0]
        assert list(eys) == pytest.approx([e.eval_loss for e in evals])
    view.x_axis.setCurrentIndex(view.x_axis.findData("tokens"))
    xs, _ = view.curve_items[("facts-adapter@1", "train")].getData()
    assert list(xs) == sorted(xs)
    assert xs[-1] > 6
    assert view.plot.getAxis("bottom").labelText == "Tokens seen"


def test_lineage_panel_names_everything_and_links_route_in_the_window(
    qtbot: QtBot, trained: Vault
) -> None:
    window = MainWindow(trained.ws.home, session=Session(trained))
    qtbot.addWidget(window)
    page = window.registry_page
    window.show_page("Registry")
    page.select("facts-adapter@2")
    lineage = page.lineage_view.lineage
    assert lineage is not None
    assert lineage.run is not None
    assert lineage.run.device == "cpu"
    assert lineage.base_model is not None
    assert lineage.dataset is not None
    text = page.lineage_view.browser.toPlainText()
    for needle in (
        lineage.run.id,
        "device\ncpu",
        f"sha256 {lineage.base_model.sha256}",
        f"facts@1, {lineage.dataset.rows} rows",
        f"sha256 {lineage.dataset.sha256}",
        "lora.rank\n16",
        "seed\n7",
        "torch\n2.",
        "No evaluation results recorded.",
        "Not exported yet.",
    ):
        assert needle in text, needle
    assert "wall time" in text
    assert "peak memory" in text
    page.lineage_view.browser.anchorClicked.emit(QUrl("dataset:facts@1"))
    assert window.stack.currentWidget().title == "Datasets"
    page.lineage_view.browser.anchorClicked.emit(QUrl(f"run:{lineage.run.id}"))
    assert window.stack.currentWidget().title == "Train"
    # Export… opens the Export page with the version chosen.
    window.show_page("Registry")
    qtbot.mouseClick(page.export_button, Qt.MouseButton.LeftButton)
    assert window.stack.currentWidget() is window.export_page
    assert window.export_page.version_combo.currentText() == "facts-adapter@2"


def test_tag_from_the_page_shows_the_move_and_the_cli_sees_it(qtbot: QtBot, light: Vault) -> None:
    page = _page(qtbot, light)
    cli = CliRunner(light.ws.home)

    def tag(ref: str, name: str) -> str:
        page.select(ref)
        dialog = page.ask_tag()
        assert dialog is not None
        assert dialog.isVisible()
        dialog.tag_combo.setEditText(name)
        words = dialog.move_label.text()
        qtbot.keyClick(dialog, Qt.Key.Key_Return)
        assert not dialog.isVisible()
        return words

    assert tag("contracts@1", "production") == (
        "contracts@1 will be tagged production; no version of contracts has it now."
    )
    assert tag("contracts@3", "production") == (
        "The tag production will move from contracts@1 to contracts@3: contracts@1 loses it."
    )
    assert page.status.text() == "Tagged contracts@3 as production (moved from @1)."
    shown = cli("adapter", "show", "contracts@production", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["ref"] == "contracts@3"

    # Free text works; an invalid tag is explained and cannot be applied; Esc cancels.
    page.select("contracts@2")
    dialog = page.ask_tag()
    assert dialog is not None
    dialog.tag_combo.setEditText("2fast")
    assert "invalid tag '2fast'" in dialog.move_label.text()
    assert not dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    assert not dialog.isVisible()
    assert tag("contracts@2", "legal-review") == (
        "contracts@2 will be tagged legal-review; no version of contracts has it now."
    )
    groups = {g.name: g for g in page.groups}
    assert groups["contracts"].tags == {"production": 3, "legal-review": 2}
    page.select("contracts@2")
    page.remove_tag("contracts@2", "legal-review")
    assert page.status.text() == "Removed tag legal-review from contracts@2."
    history = page.lineage_view.browser.toPlainText()
    assert "legal-review removed by" in history
    assert "production → @3 (from @1) by" in history


def test_delete_is_refused_while_tagged_and_keeps_the_lineage(qtbot: QtBot, light: Vault) -> None:
    with Registry.open(light.ws, audit_key=light.audit_key) as reg:
        reg.set_tag("contracts@2", "staging")
    page = _page(qtbot, light)
    page.select("contracts@2")
    assert page.ask_delete() is None
    assert page.status.text() == (
        "contracts@2 carries the tag(s) staging: move or remove them first (Tag… or Untag…), "
        "then delete it."
    )
    page.select("contracts@1")
    box = page.ask_delete()
    assert box is not None
    assert "its lineage, exports and audit rows stay" in box.text()
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Yes), Qt.MouseButton.LeftButton)
    assert page.status.text() == "Deleted contracts@1; its lineage stays (Show deleted)."
    assert [item.text(0) for item in page.version_items()] == ["@3", "@2"]
    page.show_deleted.setChecked(True)
    assert [item.text(0) for item in page.version_items()] == ["@3", "@2", "@1 (deleted)"]
    page.select("contracts@1")
    assert page.lineage_view.lineage is not None
    assert page.lineage_view.lineage.deleted_at is not None
    assert not page.delete_button.isEnabled()
    assert not page.export_button.isEnabled()
    with Registry.open(light.ws) as reg:
        (row,) = reg.audit_rows(action="adapter.delete")
    assert row["object"] == "contracts@1"


def test_verify_highlights_the_first_bad_audit_row_and_says_what_to_do(
    qtbot: QtBot, light: Vault
) -> None:
    page = _page(qtbot, light)
    view = page.audit_view
    page.tabs.setCurrentWidget(view)
    with qtbot.waitSignal(view.verified, timeout=WAIT_MS) as blocker:
        view.verify()
    assert blocker.args[0]["ok"] is True
    assert view.status.text() == "Verify: all checks passed."
    # Someone edits the log behind the appliance's back (the trigger is no obstacle to them).
    with Registry.open(light.ws) as reg:
        target = next(r for r in reg.audit_rows() if r["action"] == "adapter.create")
    conn = sqlite3.connect(light.ws.registry_path)
    with conn:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("UPDATE audit SET user = 'mallory' WHERE seq = ?", (target["seq"],))
    conn.close()
    # Filter the log so the edited row is hidden: Verify must bring it into sight.
    view.action_filter.setCurrentIndex(view.action_filter.findText("model.import"))
    assert view.row_of(target["seq"]) is None
    with qtbot.waitSignal(view.verified, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(view.verify_button, Qt.MouseButton.LeftButton)
    data = blocker.args[0]
    assert data["first_bad_audit_row"] == target["seq"]
    row = view.row_of(target["seq"])
    assert row is not None
    assert view.table.currentRow() == row
    item = view.table.item(row, 0)
    assert item.background().color() == audit_view.FIRST_BAD
    assert "edited" in item.toolTip()
    assert view.status.text() == (
        f"The audit chain is broken: the first bad row is #{target['seq']} "
        "(its content does not match its hash (it was edited))."
    )
    report = view.report_box.toPlainText()
    assert f"FAIL audit row {target['seq']}: its content does not match its hash" in report
    assert "What to do:" in report
    assert f"from row {target['seq']} on: stop using this workspace, restore " in report
    assert "registry.sqlite from a backup made before" in report


def test_production_goes_through_the_golden_set_gate(qtbot: QtBot, light: Vault) -> None:
    with Registry.open(light.ws, audit_key=light.audit_key) as reg:
        reg.set_tag("contracts@1", "production")
        reg.set_golden_set("contracts", "docs", 1)
    page = _page(qtbot, light)
    page.select("contracts@3")
    dialog = page.ask_tag()
    assert dialog is not None
    dialog.tag_combo.setEditText("production")
    assert dialog.move_label.text().startswith("The tag production will move from contracts@1")
    gate_words = dialog.gate_label.text()
    assert gate_words.startswith("The golden-set gate refuses: no current figures of ")
    assert "contracts@3" in gate_words
    assert not dialog.override_edit.isHidden()
    assert not dialog.ok_button.isEnabled()  # refused until a reason is given
    dialog.override_edit.setText("hotfix approved by J. Doe")
    assert dialog.ok_button.isEnabled()
    qtbot.keyClick(dialog, Qt.Key.Key_Return)
    assert page.status.text() == "Tagged contracts@3 as production (moved from @1)."
    with Registry.open(light.ws) as reg:
        row = reg.audit_rows(action="adapter.tag")[-1]
    assert row["details"]["override"] == "hotfix approved by J. Doe"
    assert row["details"]["gate"]["passed"] is False
    # Other tags are not gated.
    page.select("contracts@2")
    staging = page.ask_tag()
    assert staging is not None
    staging.tag_combo.setEditText("staging")
    assert staging.gate_label.isHidden()
    assert staging.ok_button.isEnabled()
    qtbot.keyClick(staging, Qt.Key.Key_Escape)


def test_locking_the_window_clears_the_registry_and_export_pages(
    qtbot: QtBot, light: Vault
) -> None:
    session = Session(light)
    window = MainWindow(light.ws.home, session=session)
    qtbot.addWidget(window)
    window.show()
    assert window.locker is not None
    registry, export = window.registry_page, window.export_page
    window.show_page("Registry")
    registry.select("contracts@2")
    assert registry.lineage_view.lineage is not None
    assert registry.audit_view.table.rowCount() > 0
    window.export_version("contracts@2")
    assert export.version_combo.count() == 3
    window.locker.lock_now()
    qtbot.waitUntil(lambda: session.locked, timeout=WAIT_MS)
    assert registry.tree.topLevelItemCount() == 0
    assert registry.lineage_view.lineage is None
    assert "contracts" not in registry.lineage_view.browser.toPlainText()
    assert registry.audit_view.table.rowCount() == 0
    assert export.version_combo.count() == 0
    assert export.history_table.rowCount() == 0
    registry.refresh()  # nothing to read while locked, and no error either
    export.refresh()
    assert registry.tree.topLevelItemCount() == 0
    with qtbot.waitSignal(window.locker.unlocked, timeout=WAIT_MS):
        window.locker.screen.passphrase.setText(PASS)
        window.locker.screen.submit()
    assert [item.text(0) for item in registry.version_items()] == ["@3", "@2", "@1"]
    assert registry.audit_view.table.rowCount() > 0
    assert export.version_combo.count() == 3
