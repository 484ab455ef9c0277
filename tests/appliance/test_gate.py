"""The golden-set gate on the production tag, and evaluation rows in the registry.

Registry-level: the figures are recorded with ``reg.evaluations.add`` as an ``eval`` job would
record them (the job itself is tested in test_evaluation.py and test_gate_cli.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from appliance.errors import NotFoundError, UsageError
from appliance.evaluation import gate
from appliance.evaluation.gate import GateRefused
from appliance.registry import Registry
from appliance.registry.refs import os_user
from appliance.registry.rows import AuditRow
from appliance.workspace import Workspace
from tests.helpers.registry_data import add_adapter, add_dataset, add_fake_model

SETTINGS = {"max_new_tokens": 64, "reference_max_words": 32, "precision": "fp32"}


@pytest.fixture
def reg(ws: Workspace) -> Iterator[Registry]:
    """Base model, dataset ``docs`` (training data), ``golden@1``, adapters legal@1 and @2."""
    with Registry.open(ws) as registry:
        add_fake_model(registry)
        add_dataset(registry)
        add_dataset(registry, "golden", sha256="11" * 32)
        add_adapter(registry, "legal", content=b"one")
        add_adapter(registry, "legal", content=b"two")
        yield registry


def score(
    reg: Registry,
    ref: str,
    loss: float | None,
    *,
    contains: float | None = 0.5,
    version: int = 1,
    split: str = "all",
    **settings: Any,
) -> int:
    return reg.evaluations.add(
        ref,
        dataset="golden",
        dataset_version=version,
        split=split,
        metrics={"answer_loss": loss, "contains": contains, "reference_rows": 4},
        settings={**SETTINGS, **settings},
        lib_versions={"torch": "2.13.0"},
    )


def last_audit(reg: Registry) -> AuditRow:
    return reg.audit_rows(limit=1)[0]


def test_without_a_golden_set_tagging_works_as_before(reg: Registry) -> None:
    check = gate.check(reg, "legal@2")
    assert not check.gated
    assert check.passed
    moved, _ = gate.promote(reg, "legal@2")
    assert moved["ref"] == "legal@2"
    assert "gate" not in last_audit(reg)["details"]


def test_evaluation_rows_are_lineage(reg: Registry) -> None:
    row_id = score(reg, "legal@1", 1.25)
    (row,) = reg.evaluations.all("legal@1")
    assert row["id"] == row_id
    assert row["adapter"] == "legal@1"
    assert row["dataset"] == "golden@1"
    assert row["dataset_sha256"] == "11" * 32
    assert row["adapter_sha256"] == reg.adapters.version("legal@1")["sha256"]
    assert row["metrics"]["answer_loss"] == 1.25
    assert row["lib_versions"] == {"torch": "2.13.0"}
    assert reg.evaluations.all("legal@2") == []
    audit = last_audit(reg)
    assert (audit["action"], audit["object"]) == ("eval.create", "legal@1")
    assert audit["details"]["dataset"] == "golden@1"
    with pytest.raises(UsageError, match="unknown split"):
        score(reg, "legal@1", 1.0, split="test")


def test_golden_set_is_attached_audited_and_detached(reg: Registry) -> None:
    attached = reg.golden_sets.set("legal", "golden", 1)
    assert attached["dataset"] == "golden@1"
    assert attached["metric"] == "answer_loss"
    assert attached["previous"] is None
    audit = last_audit(reg)
    assert (audit["action"], audit["object"]) == ("adapter.golden", "legal")
    assert audit["details"]["sha256"] == "11" * 32
    add_dataset(reg, "golden", sha256="22" * 32)
    again = reg.golden_sets.set("legal", "golden", 2, "contains")
    assert (again["dataset"], again["previous"], again["metric"]) == (
        "golden@2",
        "golden@1",
        "contains",
    )
    reg.golden_sets.remove("legal")
    assert reg.golden_sets.get("legal") is None
    assert last_audit(reg)["action"] == "adapter.golden.remove"
    with pytest.raises(NotFoundError, match="no adapter named 'nope'"):
        reg.golden_sets.set("nope", "golden", 1)
    with pytest.raises(UsageError, match="unknown gate metric 'bleu'"):
        reg.golden_sets.set("legal", "golden", 1, "bleu")


def test_first_production_version_needs_figures_then_passes(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1)
    check = gate.check(reg, "legal@1")
    assert check.gated
    assert check.missing == ["legal@1"]
    with pytest.raises(GateRefused, match="no current figures of legal@1 on golden set golden@1"):
        gate.promote(reg, "legal@1")
    score(reg, "legal@1", 1.0)
    moved, check = gate.promote(reg, "legal@1")
    assert moved["ref"] == "legal@1"
    assert check.passed
    assert last_audit(reg)["details"]["gate"]["candidate_figure"] == 1.0


def test_a_worse_version_is_refused_with_both_figures(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1)
    score(reg, "legal@1", 1.0)
    gate.promote(reg, "legal@1")
    score(reg, "legal@2", 1.5)
    score(reg, "legal@1", 1.0)
    with pytest.raises(GateRefused) as refused:
        gate.promote(reg, "legal@2")
    message = str(refused.value)
    assert "legal@2 has answer loss 1.5000 on golden set golden@1" in message
    assert "worse than legal@1 in production (answer loss 1.0000)" in message
    assert "--override" in message
    assert reg.adapters.version("legal@production")["ref"] == "legal@1"
    assert last_audit(reg)["action"] == "eval.create"  # nothing was written by the refusal


def test_a_version_no_worse_passes(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1)
    score(reg, "legal@1", 1.0)
    gate.promote(reg, "legal@1")
    score(reg, "legal@2", 1.0)
    score(reg, "legal@1", 1.0)
    moved, check = gate.promote(reg, "legal@2")
    assert moved == {"ref": "legal@2", "tag": "production", "previous": 1}
    assert (check.candidate, check.incumbent) == (1.0, 1.0)


def test_override_records_the_reason_and_the_user(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1)
    score(reg, "legal@1", 1.0)
    gate.promote(reg, "legal@1")
    score(reg, "legal@2", 2.0)
    score(reg, "legal@1", 1.0)
    with pytest.raises(UsageError, match="needs a reason"):
        gate.promote(reg, "legal@2", override="  ")
    gate.promote(reg, "legal@2", override="hotfix for ticket 42")
    assert reg.adapters.version("legal@production")["ref"] == "legal@2"
    audit = last_audit(reg)
    assert audit["action"] == "adapter.tag"
    assert audit["user"] == os_user()
    assert audit["details"]["override"] == "hotfix for ticket 42"
    assert audit["details"]["gate"]["candidate_figure"] == 2.0
    assert audit["details"]["gate"]["production_figure"] == 1.0
    assert audit["details"]["gate"]["passed"] is False


def test_contains_metric_compares_the_other_way(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1, "contains")
    score(reg, "legal@1", 1.0, contains=0.75)
    gate.promote(reg, "legal@1")
    score(reg, "legal@2", 0.5, contains=0.5)  # lower loss, but fewer answers right
    score(reg, "legal@1", 1.0, contains=0.75)
    with pytest.raises(GateRefused, match=r"contains-match 50.0% .*\(contains-match 75.0%\)"):
        gate.promote(reg, "legal@2")


def test_figures_of_an_older_golden_set_version_are_stale(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1)
    score(reg, "legal@1", 1.0)
    gate.promote(reg, "legal@1")
    score(reg, "legal@2", 0.9)
    score(reg, "legal@1", 1.0)
    add_dataset(reg, "golden", sha256="22" * 32)
    reg.golden_sets.set("legal", "golden", 2)
    check = gate.check(reg, "legal@2")
    assert check.missing == ["legal@2", "legal@1"]
    assert check.stale == ["golden@1"]
    with pytest.raises(GateRefused, match=r"figures on golden@1 are stale.*now golden@2"):
        gate.promote(reg, "legal@2")
    # Scored again on the new version, the figures differ, and they are the ones compared.
    score(reg, "legal@2", 1.4, version=2)
    score(reg, "legal@1", 1.1, version=2)
    with pytest.raises(GateRefused, match=r"answer loss 1\.4000 on golden set golden@2"):
        gate.promote(reg, "legal@2")


def test_figures_are_compared_only_under_the_same_settings(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1)
    score(reg, "legal@1", 1.0, precision="nf4-bf16")
    gate.promote(reg, "legal@1")
    score(reg, "legal@2", 0.9)  # fp32: not comparable with the nf4 figure of legal@1
    assert gate.check(reg, "legal@2").missing == ["legal@2", "legal@1"]
    score(reg, "legal@1", 1.0)
    assert gate.check(reg, "legal@2").passed


def test_a_golden_set_without_reference_answers_cannot_gate_on_contains(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1, "contains")
    score(reg, "legal@1", 1.0, contains=None)
    check = gate.check(reg, "legal@1")
    assert check.problem is not None
    assert "has no short reference answers" in check.problem
    with pytest.raises(GateRefused, match="--metric answer_loss"):
        gate.promote(reg, "legal@1")


def test_a_deleted_golden_set_refuses_until_replaced(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1)
    reg.datasets.delete_version("golden", 1)
    with pytest.raises(GateRefused, match="golden set golden@1 of legal was deleted"):
        gate.promote(reg, "legal@1")
    gate.promote(reg, "legal@1", override="golden set under review")
    assert reg.adapters.version("legal@production")["ref"] == "legal@1"


def test_the_version_in_production_is_tagged_again_without_figures(reg: Registry) -> None:
    gate.promote(reg, "legal@1")
    reg.golden_sets.set("legal", "golden", 1)
    check = gate.check(reg, "legal@1")
    assert check.already
    assert check.passed
    assert check.missing == []


def test_other_tags_are_not_gated(reg: Registry) -> None:
    reg.golden_sets.set("legal", "golden", 1)
    moved, check = gate.promote(reg, "legal@2", "staging")
    assert moved["tag"] == "staging"
    assert not check.gated
