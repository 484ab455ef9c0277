"""Evaluation results, Evaluate and Promote to production in the desktop app, over a real workspace.

The gate's refusal is driven on stored figures (as an ``eval`` job records them); scoring and
its Cancel run real ``eval`` children on the tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from appliance.adapters import AdapterWeights
from appliance.datasets.conversations import add_conversations
from appliance.evaluation import gate
from appliance.registry import Registry
from appliance.registry.refs import os_user
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import Workspace
from appliance.workspace import init as init_workspace
from gui.widgets.eval_runner import EvalRunner
from gui.widgets.evaluations import EvaluationsCompare, EvaluationsPanel
from tests.helpers.adapters import make_adapter, random_lora
from tests.helpers.registry_data import add_adapter, add_dataset, add_fake_model

PASSPHRASE = "evaluation widgets passphrase"
SETTINGS = {"max_new_tokens": 64, "reference_max_words": 32, "precision": "fp32"}
JOB_WAIT_MS = 240_000
FACTS = [
    ("Which city hosts the Quillmere Institute?", "Port Ansel."),
    ("Who founded the Quillmere Institute?", "Odile Varga."),
    ("When was the Quillmere Institute founded?", "In 1911."),
]


def _score(reg: Registry, ref: str, loss: float, contains: float = 0.5) -> int:
    return reg.evaluations.add(
        ref,
        dataset="golden",
        dataset_version=1,
        split="all",
        metrics={"answer_loss": loss, "contains": contains, "reference_rows": 4, "rows": 4},
        base_metrics={"answer_loss": 3.25, "contains": 0.0, "reference_rows": 4, "rows": 4},
        settings=SETTINGS,
        lib_versions={"torch": "2.13.0"},
    )


@pytest.fixture
def workspace(ws: Workspace) -> UnlockedWorkspace:
    """Registry rows only: a base model, datasets ``docs`` and ``golden@1``, legal@1 and @2."""
    vault = Vault.create(ws, PASSPHRASE, "alice", target_s=0)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        add_fake_model(reg)
        add_dataset(reg)
        add_dataset(reg, "golden", sha256="11" * 32)
        add_adapter(reg, "legal", content=b"one")
        add_adapter(reg, "legal", content=b"two")
    return UnlockedWorkspace(vault)


def test_the_gate_refuses_a_worse_version_with_both_figures_and_audits_an_override(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    with workspace.registry() as reg:
        reg.golden_sets.set("legal", "golden", 1)
        _score(reg, "legal@1", 0.4471)
        gate.promote(reg, "legal@1")
        _score(reg, "legal@2", 0.5120)
    panel = EvaluationsPanel(workspace)
    qtbot.addWidget(panel)
    panel.show()
    panel.show_version("legal@2")
    assert panel.heading.text() == "Evaluations of legal@2"
    assert panel.golden.text() == (
        "Golden set golden@1, gate on answer loss; in production: legal@1."
    )
    assert panel.table.rowCount() == 2
    assert panel.table.cell(0, "dataset (rows)") == "golden@1 (all) (4) · golden set"
    assert (panel.table.cell(0, "model"), panel.table.cell(0, "answer loss")) == (
        "legal@2",
        "0.5120",
    )
    assert (panel.table.cell(1, "model"), panel.table.cell(1, "answer loss")) == (
        "base model",
        "3.2500",
    )

    promote = panel.promote
    task = promote.promote()
    assert task is not None
    qtbot.waitUntil(lambda: not promote.busy, timeout=30_000)
    assert promote.status.text() == (
        "Refused: legal@2 has answer loss 0.5120 on golden set golden@1, worse than legal@1 in "
        "production (answer loss 0.4471)."
    )
    assert promote.override_row.isVisibleTo(panel)
    assert not promote.override_button.isEnabled()
    assert promote.promote_anyway() is None  # no reason, no move
    with workspace.registry() as reg:
        assert reg.adapters.version("legal@production")["ref"] == "legal@1"

    promote.reason.setText("hotfix approved by J. Doe")
    assert promote.override_button.isEnabled()
    with qtbot.waitSignal(promote.promoted, timeout=30_000):
        promote.override_button.click()
    assert promote.status.text().startswith("legal@2 is now production (it was on version 1).")
    assert "Promoted anyway; the reason is in the audit log." in promote.status.text()
    assert not promote.override_row.isVisibleTo(panel)
    with workspace.registry() as reg:
        assert reg.adapters.version("legal@production")["ref"] == "legal@2"
        audit = reg.audit_rows(limit=1)[0]
    assert (audit["action"], audit["object"]) == ("adapter.tag", "legal@2")
    assert audit["user"] == os_user()
    assert audit["details"]["override"] == "hotfix approved by J. Doe"
    assert audit["details"]["gate"]["candidate_figure"] == 0.5120
    assert audit["details"]["gate"]["production_figure"] == 0.4471
    assert panel.golden.text().endswith("this version is in production.")

    compare = EvaluationsCompare(workspace)
    qtbot.addWidget(compare)
    compare.compare(["legal@1", "legal@2"])
    rows = [
        (compare.table.cell(r, "model"), compare.table.cell(r, "answer loss"))
        for r in range(compare.table.rowCount())
    ]
    assert rows == [("legal@1", "0.4471"), ("legal@2", "0.5120"), ("base model", "3.2500")]
    assert compare.table.cell(0, "dataset") == "golden@1 (all)"

    # Locking forgets every figure shown.
    panel.on_lock()
    assert panel.table.rowCount() == 0
    assert panel.golden.text() == ""
    assert promote.status.text() == ""


def test_without_a_golden_set_promotion_is_ungated(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    panel = EvaluationsPanel(workspace)
    qtbot.addWidget(panel)
    panel.show_version("legal@1")
    assert "legal has no golden set" in panel.golden.text()
    assert panel.table.cell(0, "dataset (rows)") == "No evaluation yet: score it below."
    with qtbot.waitSignal(panel.promote.promoted, timeout=30_000):
        panel.promote.button.click()
    assert panel.promote.status.text() == (
        "legal@1 is now production. No golden set is attached to this adapter: the production "
        "tag is not gated."
    )


# -- real eval children on the tiny model --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> UnlockedWorkspace:
    """Base model ``tiny``; legal@1 and legal@2 with the same weights; a 3-row ``golden``."""
    ws, _ = init_workspace(tmp_path_factory.mktemp("eval-widgets") / "ws")
    vault = Vault.create(ws, PASSPHRASE, "alice", target_s=0)
    weights: AdapterWeights = random_lora(tiny_llama, seed=3)
    conversations = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in FACTS
    ]
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        make_adapter(vault, reg, tiny_llama, weights=weights)
        make_adapter(vault, reg, tiny_llama, weights=weights)
        for conversation in conversations:
            add_conversations(vault, reg, "golden", [conversation])
    return UnlockedWorkspace(vault)


def test_evaluate_stores_figures_and_cancel_stores_nothing(
    qtbot: QtBot, tiny_store: UnlockedWorkspace
) -> None:
    runner = EvalRunner(tiny_store)
    qtbot.addWidget(runner)
    runner.show()
    runner.set_targets(["legal@1"])
    runner.dataset_box.setCurrentText("golden@3")
    runner.split_box.setCurrentIndex(runner.split_box.findData("all"))
    stages: list[tuple[int, int, str]] = []
    run = runner.start()
    assert run is not None
    run.progress.connect(lambda d, t, w: stages.append((d, t, w)))
    assert not runner.evaluate_button.isEnabled()
    with qtbot.waitSignal(runner.evaluated, timeout=JOB_WAIT_MS) as done:
        pass
    result: dict[str, Any] = done.args[0]
    assert [a["ref"] for a in result["adapters"]] == ["legal@1"]
    assert any(w == "Scoring base model tiny" for _, _, w in stages)
    assert any(w == "Scoring legal@1" for _, _, w in stages)
    assert runner.table.rowCount() == 2
    assert runner.table.cell(0, "model") == "base (tiny)"
    assert "/3 (" in runner.table.cell(1, "contains")
    assert "golden@3 (all: 3 rows, 3 with a short reference answer" in runner.status.text()
    with tiny_store.registry() as reg:
        stored = reg.evaluations.all("legal@1")
    assert [e["id"] for e in stored] == [a["evaluation_id"] for a in result["adapters"]]

    # Cancel while the child works: nothing stored.
    run = runner.start()
    assert run is not None
    qtbot.waitUntil(lambda: run.job is not None and run.job.running, timeout=60_000)
    runner.cancel()
    qtbot.waitUntil(lambda: not run.running, timeout=60_000)
    assert runner.status.text() == "Evaluation cancelled; nothing was stored."
    assert runner.evaluate_button.isEnabled()
    with tiny_store.registry() as reg:
        assert len(reg.evaluations.all("legal@1")) == 1


def test_promote_computes_the_missing_figures_first(
    qtbot: QtBot, tiny_store: UnlockedWorkspace
) -> None:
    with tiny_store.registry() as reg:
        reg.tags.set("legal@1", "production")
        reg.golden_sets.set("legal", "golden", 3)
    panel = EvaluationsPanel(tiny_store)
    qtbot.addWidget(panel)
    panel.show_version("legal@2")
    with qtbot.waitSignal(panel.promote.promoted, timeout=JOB_WAIT_MS):
        panel.promote.button.click()
    # The same weights score the same: the gate passes on fresh figures of both versions.
    status = panel.promote.status.text()
    assert status.startswith("legal@2 is now production (it was on version 1). Golden set golden@3")
    assert "vs legal@1 answer loss" in status
    assert status.endswith("the gate passes.")
    with tiny_store.registry() as reg:
        for ref in ("legal@1", "legal@2"):
            rows = [e for e in reg.evaluations.all(ref) if e["split"] == "all"]
            assert rows[-1]["dataset"] == "golden@3"
        audit = reg.audit_rows(limit=1)[0]
    assert audit["details"]["gate"]["passed"] is True
    assert "override" not in audit["details"]
    assert panel.table.cell(0, "dataset (rows)") == "golden@3 (all) (3) · golden set"
