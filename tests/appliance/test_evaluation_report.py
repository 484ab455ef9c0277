"""Stored evaluations shaped for the desktop's tables: one version's history, versions compared."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from appliance.evaluation.report import compare, figures, history
from appliance.registry import Registry
from appliance.workspace import Workspace
from tests.helpers.registry_data import add_adapter, add_dataset, add_fake_model

FP32 = {"max_new_tokens": 64, "reference_max_words": 32, "precision": "fp32"}


@pytest.fixture
def reg(ws: Workspace) -> Iterator[Registry]:
    with Registry.open(ws) as registry:
        add_fake_model(registry)
        add_dataset(registry)
        add_dataset(registry, "golden", sha256="11" * 32)
        add_dataset(registry, "heldout", sha256="22" * 32)
        add_adapter(registry, "legal", content=b"one")
        add_adapter(registry, "legal", content=b"two")
        yield registry


def _score(reg: Registry, ref: str, dataset: str, loss: float, **settings: Any) -> None:
    reg.evaluations.add(
        ref,
        dataset=dataset,
        dataset_version=1,
        split="all",
        metrics={"answer_loss": loss, "rows": 4, "reference_rows": 4, "contains": 0.25,
                 "contains_count": 1, "exact_match": 0.0, "exact_count": 0},
        base_metrics={"answer_loss": 3.0},
        settings={**FP32, **settings},
    )  # fmt: skip


def test_history_is_newest_first_and_marks_the_golden_set(reg: Registry) -> None:
    _score(reg, "legal@1", "heldout", 0.9)
    _score(reg, "legal@1", "golden", 0.5)
    reg.golden_sets.set("legal", "golden", 1)
    rows = history(reg, "legal@1")
    assert [(r.dataset, r.golden) for r in rows] == [("golden@1", True), ("heldout@1", False)]
    assert rows[0].where == "golden@1 (all)"
    assert figures(rows[0].metrics) == ["0.5000", "-", "0/4 (0%)", "1/4 (25%)", "-"]
    assert figures(None) == ["-"] * 5


def test_compare_puts_shared_datasets_first_and_flags_other_settings(reg: Registry) -> None:
    _score(reg, "legal@1", "heldout", 0.9)
    _score(reg, "legal@1", "golden", 0.6)
    _score(reg, "legal@1", "golden", 0.5)  # the newer figure counts
    _score(reg, "legal@2", "golden", 0.7, precision="nf4-bf16")
    found = compare(reg, ["legal@1", "legal@2"])
    assert [(c.dataset, c.comparable) for c in found] == [("golden@1", False), ("heldout@1", True)]
    golden, heldout = found
    assert golden.by_version["legal@1"] is not None
    assert golden.by_version["legal@1"].metrics["answer_loss"] == 0.5
    assert heldout.by_version["legal@2"] is None
    assert golden.base == {"answer_loss": 3.0}
