"""The Registry page over real workspaces: compare real runs, tag (checked with the CLI),
delete, lineage links, the audit view's Verify against a row edited with sqlite3, and a
version's evaluations under its lineage: scored from the page in a real ``eval`` child (which
locking ends), shown in Compare, and promoted to production through the golden-set gate."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt, QUrl
from PySide6.QtWidgets import QDialogButtonBox, QMessageBox
from pytestqt.qtbot import QtBot

from appliance.models import import_model
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import init as init_workspace
from gui.main_window import MainWindow
from gui.pages.registry import RegistryPage
from gui.widgets import audit_view
from tests.helpers.cli import CliRunner
from tests.helpers.registry_data import add_adapter, add_dataset
from tests.helpers.tables import table_item
from tests.helpers.training import PASS as PASS_TRAINED
from tests.helpers.training import make_workspace, run_folder, tiny_config, train_adapter

WAIT_MS = 120_000
JOB_WAIT_MS = 240_000
PASS = "registry page passphrase"
SETTINGS = {"max_new_tokens": 64, "reference_max_words": 32, "precision": "fp32"}


def _score(reg: Registry, ref: str, loss: float) -> int:
    """Figures on golden set docs@1 as an ``eval`` job stores them."""
    return reg.evaluations.add(
        ref,
        dataset="docs",
        dataset_version=1,
        split="all",
        metrics={"answer_loss": loss, "contains": 0.5, "reference_rows": 4, "rows": 4},
        base_metrics={"answer_loss": 3.25, "contains": 0.0, "reference_rows": 4, "rows": 4},
        settings=SETTINGS,
        lib_versions={"torch": "2.13.0"},
    )


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
    ws, _ = init_workspace(tmp_path / "ws")
    vault = Vault.create(ws, PASS, "alice", target_s=0)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        import_model(ws, reg, tiny_llama, "tiny")
        add_dataset(reg, "docs", path=None)
        for n in range(3):
            add_adapter(reg, "contracts", base="tiny", content=f"weights {n}".encode())
    return vault


def _page(qtbot: QtBot, vault: Vault) -> RegistryPage:
    page = RegistryPage(UnlockedWorkspace(vault))
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
        [table_item(view.config_table, r, c).text() for c in range(2)]
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
        runs = [str(reg.adapters.version(ref)["run_id"]) for ref in comparison.refs]
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
    window = MainWindow(trained.ws.home, workspace=UnlockedWorkspace(trained))
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
    assert window.stack.currentWidget() is window.datasets_page
    page.lineage_view.browser.anchorClicked.emit(QUrl(f"run:{lineage.run.id}"))
    assert window.stack.currentWidget() is window.train_page
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
        reg.tags.set("contracts@2", "staging")
        _score(reg, "contracts@1", 0.75)
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
    # Its evaluations stay readable; without weights it is neither scored nor promoted.
    assert page.evaluations.heading.text() == "Evaluations of contracts@1"
    assert page.evaluations.table.cell(0, "answer loss") == "0.7500"
    assert not page.evaluations.runner.evaluate_button.isEnabled()
    assert not page.evaluations.promote.button.isEnabled()
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
    item = table_item(view.table, row, 0)
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
        reg.golden_sets.set("contracts", "docs", 1)
        _score(reg, "contracts@1", 0.4471)
        reg.tags.set("contracts@1", "production")
        _score(reg, "contracts@3", 0.5120)
    page = _page(qtbot, light)
    page.select("contracts@3")
    panel = page.evaluations
    assert panel.heading.text() == "Evaluations of contracts@3"
    assert panel.golden.text() == (
        "Golden set docs@1, gate on answer loss; in production: contracts@1."
    )
    assert panel.table.cell(0, "dataset (rows)") == "docs@1 (all) (4) · golden set"
    assert panel.table.cell(0, "answer loss") == "0.5120"

    # Tag… production hands the version to the gate under the lineage: one gate in the app.
    page.tabs.setCurrentWidget(page.audit_view)
    dialog = page.ask_tag()
    assert dialog is not None
    dialog.tag_combo.setEditText("production")
    assert dialog.move_label.text().startswith("The tag production will move from contracts@1")
    assert dialog.gate_label.text().startswith(
        "production is guarded by the golden set docs@1: contracts@3 must do no worse on it"
    )
    assert dialog.ok_button.isEnabled()
    assert dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).text() == "Check the gate"
    qtbot.keyClick(dialog, Qt.Key.Key_Return)
    assert not dialog.isVisible()
    assert page.tabs.currentWidget() is page.lineage_tab
    promote = panel.promote
    qtbot.waitUntil(lambda: not promote.busy and bool(promote.status.text()), timeout=WAIT_MS)
    assert promote.status.text() == (
        "Refused: contracts@3 has answer loss 0.5120 on golden set docs@1, worse than "
        "contracts@1 in production (answer loss 0.4471)."
    )
    assert promote.override_row.isVisibleTo(page)
    assert not promote.override_button.isEnabled()
    with Registry.open(light.ws) as reg:
        assert reg.adapters.version("contracts@production")["ref"] == "contracts@1"

    # Promote anyway with a reason: audited, and the page shows the move at once.
    promote.reason.setText("hotfix approved by J. Doe")
    with qtbot.waitSignal(panel.changed, timeout=WAIT_MS):
        promote.override_button.click()
    assert promote.status.text().startswith("contracts@3 is now production (it was on version 1).")
    assert {g.name: g for g in page.groups}["contracts"].tags == {"production": 3}
    assert "production → @3 (from @1) by" in page.lineage_view.browser.toPlainText()
    assert panel.golden.text().endswith("this version is in production.")
    with Registry.open(light.ws) as reg:
        row = reg.audit_rows(action="adapter.tag")[-1]
    assert row["object"] == "contracts@3"
    assert row["details"]["override"] == "hotfix approved by J. Doe"
    assert row["details"]["gate"]["passed"] is False
    assert row["details"]["gate"]["candidate_figure"] == 0.5120
    assert row["details"]["gate"]["production_figure"] == 0.4471

    # Other tags are not gated: the dialog moves them itself.
    page.select("contracts@2")
    staging = page.ask_tag()
    assert staging is not None
    staging.tag_combo.setEditText("staging")
    assert staging.gate_label.isHidden()
    assert not staging.gated
    assert staging.ok_button.isEnabled()
    qtbot.keyClick(staging, Qt.Key.Key_Return)
    assert page.status.text() == "Tagged contracts@2 as staging."


def test_locking_the_window_clears_the_registry_and_export_pages(
    qtbot: QtBot, light: Vault
) -> None:
    workspace = UnlockedWorkspace(light)
    window = MainWindow(light.ws.home, workspace=workspace)
    qtbot.addWidget(window)
    window.show()
    assert window.locker is not None
    with Registry.open(light.ws, audit_key=light.audit_key) as reg:
        _score(reg, "contracts@2", 0.75)
        _score(reg, "contracts@3", 0.5)
    registry, export = window.registry_page, window.export_page
    window.show_page("Registry")
    registry.select("contracts@2", "contracts@3")
    with qtbot.waitSignal(registry.compared, timeout=WAIT_MS):
        registry.compare_selected()
    assert registry.compare_view.evaluations.table.rowCount() == 3
    registry.select("contracts@2")
    assert registry.lineage_view.lineage is not None
    assert registry.evaluations.table.rowCount() == 2
    assert registry.evaluations.runner.dataset_box.currentText() == "docs@1"
    assert registry.audit_view.table.rowCount() > 0
    window.export_version("contracts@2")
    assert export.version_combo.count() == 3
    window.locker.lock_now()
    qtbot.waitUntil(lambda: workspace.locked, timeout=WAIT_MS)
    assert registry.tree.topLevelItemCount() == 0
    assert registry.lineage_view.lineage is None
    assert "contracts" not in registry.lineage_view.browser.toPlainText()
    evaluations = registry.evaluations
    assert evaluations.table.rowCount() == 0
    assert (evaluations.heading.text(), evaluations.golden.text()) == ("Evaluations", "")
    assert evaluations.runner.dataset_box.count() == 0
    assert not evaluations.promote.button.isEnabled()
    assert registry.compare_view.evaluations.table.rowCount() == 0
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
    registry.select("contracts@2")
    assert registry.evaluations.table.rowCount() == 2


def test_evaluate_from_the_page_in_a_real_child_and_locking_ends_one(
    qtbot: QtBot, trained: Vault
) -> None:
    """facts-adapter@1 only: the other tests of ``trained`` read @2's lineage."""
    workspace = UnlockedWorkspace(trained)
    window = MainWindow(trained.ws.home, workspace=workspace)
    qtbot.addWidget(window)
    window.show()
    assert window.locker is not None
    page = window.registry_page
    window.show_page("Registry")
    page.select("facts-adapter@1")
    panel = page.evaluations
    assert panel.isVisible()
    assert panel.heading.text() == "Evaluations of facts-adapter@1"
    assert panel.table.cell(0, "dataset (rows)") == "No evaluation yet: score it below."
    assert "facts-adapter has no golden set" in panel.golden.text()
    runner = panel.runner
    assert runner.dataset_box.currentText() == "facts@1"
    assert runner.targets == ["facts-adapter@1"]

    with qtbot.waitSignal(runner.evaluated, timeout=JOB_WAIT_MS) as done:
        qtbot.mouseClick(runner.evaluate_button, Qt.MouseButton.LeftButton)
    result = done.args[0]
    (scored,) = result["adapters"]
    with Registry.open(trained.ws) as reg:
        (stored,) = reg.evaluations.all("facts-adapter@1")
    assert stored["id"] == scored["evaluation_id"]
    loss = f"{scored['metrics']['answer_loss']:.4f}"
    # The panel and the lineage above it show the stored row at once.
    assert [panel.table.cell(r, "model") for r in range(panel.table.rowCount())] == [
        "facts-adapter@1",
        "base model",
    ]
    assert panel.table.cell(0, "dataset (rows)").startswith("facts@1 (eval) (")
    assert panel.table.cell(0, "answer loss") == loss
    lineage = page.lineage_view.browser.toPlainText()
    assert "No evaluation results recorded." not in lineage
    assert "facts@1 (eval): " in lineage
    assert f"answer_loss {scored['metrics']['answer_loss']:.6g}" in lineage

    # Compare: @1's figures beside "-" for @2, which was never scored there.
    page.select("facts-adapter@1", "facts-adapter@2")
    with qtbot.waitSignal(page.compared, timeout=WAIT_MS):
        page.compare_selected()
    table = page.compare_view.evaluations.table
    rows = [(table.cell(r, "model"), table.cell(r, "answer loss")) for r in range(3)]
    assert rows[:2] == [("facts-adapter@1", loss), ("facts-adapter@2", "-")]
    assert rows[2][0] == "base model"

    # Locking while the child scores ends it: nothing stored, said once unlocked.
    page.select("facts-adapter@1")
    run = runner.start()
    assert run is not None
    qtbot.waitUntil(lambda: run.job is not None and run.job.running, timeout=60_000)
    window.locker.lock_now()
    qtbot.waitUntil(lambda: workspace.locked and not run.running, timeout=60_000)
    assert panel.table.rowCount() == 0
    with Registry.open(trained.ws) as reg:
        assert len(reg.evaluations.all("facts-adapter@1")) == 1
    with qtbot.waitSignal(window.locker.unlocked, timeout=WAIT_MS):
        window.locker.screen.passphrase.setText(PASS_TRAINED)
        window.locker.screen.submit()
    assert runner.status.text() == (
        "The evaluation was ended when the workspace was locked; nothing was stored."
    )
    page.select("facts-adapter@1")
    assert runner.evaluate_button.isEnabled()
    assert panel.table.rowCount() == 2
