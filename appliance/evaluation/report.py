"""Stored evaluation results as the desktop app shows them: one version's, or several side by side.

The registry keeps every evaluation of an adapter version (:mod:`appliance.registry.evaluations`);
these functions read and shape them for a table: the figures as text (the CLI's formats), the
dataset version and split they were computed on, whether that dataset version is the name's
golden set now. Torch-free and Qt-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.evaluation.metrics import comparable
from appliance.registry import Registry

FIGURES = ("answer loss", "perplexity", "exact match", "contains", "tokens/s")
"""The figures of one model, in table order."""


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _share(count: Any, share: Any, rows: Any) -> str:
    if not isinstance(share, int | float):
        return "-"
    return f"{count}/{rows} ({share:.0%})"


def figures(metrics: dict[str, Any] | None) -> list[str]:
    """The :data:`FIGURES` of one model's metrics as text ("-" where there is none)."""
    if not metrics:
        return ["-"] * len(FIGURES)
    refs = metrics.get("reference_rows")
    return [
        _number(metrics.get("answer_loss"), 4),
        _number(metrics.get("perplexity"), 2),
        _share(metrics.get("exact_count"), metrics.get("exact_match"), refs),
        _share(metrics.get("contains_count"), metrics.get("contains"), refs),
        _number(metrics.get("tokens_per_s"), 1),
    ]


@dataclass(frozen=True)
class Evaluation:
    """One stored result: an adapter version and its base scored on a dataset version."""

    id: int
    adapter: str
    """``NAME@N``."""
    dataset: str
    """``NAME@V``."""
    split: str
    rows: int
    metrics: dict[str, Any]
    base_metrics: dict[str, Any] | None
    precision: str
    created_at: str
    created_by: str
    golden: bool
    """Whether ``dataset`` is the adapter name's golden set now (split ``all``: what the gate
    compares)."""
    settings: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        """``orgfacts@1 (eval)``."""
        return f"{self.dataset} ({self.split})"

    @property
    def when(self) -> str:
        return self.created_at[:16].replace("T", " ")


def history(reg: Registry, ref: str) -> list[Evaluation]:
    """The evaluations of adapter version ``ref``, newest first (a deleted version's too: its
    lineage stays readable).

    Raises:
        NotFoundError: no such adapter version.
    """
    adapter = reg.adapters.version(ref, include_deleted=True)
    golden = reg.golden_sets.get(adapter["name"])
    golden_id = golden["dataset_version_id"] if golden and not golden["deleted_at"] else None
    found = []
    for row in reversed(reg.evaluations.all(adapter["ref"])):
        metrics = row["metrics"] or {}
        found.append(
            Evaluation(
                id=int(row["id"]),
                adapter=row["adapter"],
                dataset=row["dataset"],
                split=row["split"],
                rows=int(metrics.get("rows") or 0),
                metrics=metrics,
                base_metrics=row["base_metrics"],
                precision=str((row["settings"] or {}).get("precision", "")),
                created_at=str(row["created_at"]),
                created_by=str(row.get("created_by") or ""),
                golden=row["dataset_version_id"] == golden_id and row["split"] == "all",
                settings=row["settings"] or {},
            )
        )
    return found


@dataclass(frozen=True)
class Comparison:
    """The figures of several versions on one dataset version and split."""

    dataset: str
    split: str
    by_version: dict[str, Evaluation | None]
    """Each version's latest evaluation there, None where it has none."""
    base: dict[str, Any] | None
    """The base model's figures, from the newest of those evaluations."""
    comparable: bool
    """Whether the evaluations share the settings and precision that change figures (so the
    versions can be ranked on them)."""


def compare(reg: Registry, refs: list[str]) -> list[Comparison]:
    """For each dataset version and split on which any of ``refs`` was scored, each version's
    latest figures there; those scored for every version first, then by dataset. Deleted versions
    are included, as in :func:`appliance.training.compare.compare_versions`.

    Raises:
        NotFoundError: no such adapter version.
    """
    latest: dict[tuple[str, str], dict[str, Evaluation]] = {}
    names = [reg.adapters.version(ref, include_deleted=True)["ref"] for ref in refs]
    for ref in names:
        for evaluation in history(reg, ref):
            key = (evaluation.dataset, evaluation.split)
            latest.setdefault(key, {}).setdefault(ref, evaluation)  # newest first
    found = []
    for (dataset, split), by_ref in latest.items():
        present = list(by_ref.values())
        newest = max(present, key=lambda e: e.id)
        found.append(
            Comparison(
                dataset=dataset,
                split=split,
                by_version={ref: by_ref.get(ref) for ref in names},
                base=newest.base_metrics,
                comparable=len({comparable(e.settings) for e in present}) == 1,
            )
        )
    found.sort(key=lambda c: (any(e is None for e in c.by_version.values()), c.dataset, c.split))
    return found
