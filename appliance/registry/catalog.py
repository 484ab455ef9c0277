"""The adapters of a workspace as people browse them: grouped by name, filtered, sorted.

Typed records over the registry's rows, for the desktop app's Registry and Export pages (which
hold no SQL) and for scripts. Filtering happens here on the rows the registry returns: a
workspace holds hundreds of versions, not millions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from appliance.errors import UsageError
from appliance.registry import Registry
from appliance.registry.rows import AdapterVersionRow

SORTS = ("date", "eval_loss")
"""``date``: newest first. ``eval_loss``: lowest final eval loss first (versions without one
last)."""


@dataclass(frozen=True)
class VersionSummary:
    """One adapter version as a list shows it."""

    ref: str
    """``NAME@N``."""
    name: str
    version: int
    tags: tuple[str, ...]
    base_model: str | None
    dataset: str | None
    """``NAME@V`` of the dataset version it was trained on."""
    eval_loss: float | None
    train_loss: float | None
    created_at: str
    created_by: str
    run_id: str | None
    deleted_at: str | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @classmethod
    def from_row(cls, row: AdapterVersionRow) -> VersionSummary:
        """From a row of ``reg.adapters.versions``."""
        metrics = row.get("metrics") or {}
        dataset = f"{row['dataset']}@{row['dataset_version']}" if row.get("dataset") else None
        return cls(
            ref=row["ref"],
            name=row["name"],
            version=int(row["version"]),
            tags=tuple(row.get("tags") or ()),
            base_model=row.get("base_model"),
            dataset=dataset,
            eval_loss=finite_number(metrics.get("eval_loss")),
            train_loss=finite_number(metrics.get("train_loss")),
            created_at=row["created_at"],
            created_by=row["created_by"],
            run_id=row.get("run_id"),
            deleted_at=row.get("deleted_at"),
        )


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite int or float (not a bool), else None: metrics
    read back from JSON may hold anything."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class AdapterGroup:
    """All (shown) versions of one adapter name."""

    name: str
    versions: tuple[VersionSummary, ...]
    """In the order the filter's ``sort`` asks for."""

    @property
    def tags(self) -> dict[str, int]:
        """Each tag of the name and the version it points at."""
        return {tag: v.version for v in self.versions for tag in v.tags}


@dataclass(frozen=True)
class CatalogFilter:
    """Which versions to show and in which order. ``None`` means any."""

    base_model: str | None = None
    """Only versions trained on this base model (by name)."""
    dataset: str | None = None
    """Only versions trained on this dataset: a name (any version) or ``NAME@V``."""
    tag: str | None = None
    """Only versions carrying this tag."""
    sort: str = "date"
    """One of :data:`SORTS`."""
    include_deleted: bool = False
    """Also show deleted versions (their lineage stays)."""

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise UsageError(f"unknown sort {self.sort!r}; use one of {', '.join(SORTS)}")

    def admits(self, version: VersionSummary) -> bool:
        if version.deleted and not self.include_deleted:
            return False
        if self.base_model is not None and version.base_model != self.base_model:
            return False
        if self.dataset is not None:
            if version.dataset is None:
                return False
            wanted = self.dataset if "@" in self.dataset else f"{self.dataset}@"
            if not (version.dataset == wanted or version.dataset.startswith(wanted)):
                return False
        return self.tag is None or self.tag in version.tags


def _sort_key(sort: str, version: VersionSummary) -> tuple[Any, ...]:
    if sort == "eval_loss":
        loss = version.eval_loss
        return (loss is None, loss if loss is not None else 0.0, version.name, -version.version)
    # Newest first: ISO times sort as text; negate by sorting in reverse below.
    return (version.created_at, version.version)


def adapter_catalog(reg: Registry, flt: CatalogFilter | None = None) -> list[AdapterGroup]:
    """Adapter versions grouped by name, filtered and sorted as ``flt`` says.

    Groups come in the order of their best version under the sort (newest, or lowest eval
    loss); names with no version left after filtering are left out.
    """
    flt = flt or CatalogFilter()
    rows = reg.adapters.versions(include_deleted=flt.include_deleted)
    shown = [v for v in (VersionSummary.from_row(r) for r in rows) if flt.admits(v)]
    by_name: dict[str, list[VersionSummary]] = {}
    for version in shown:
        by_name.setdefault(version.name, []).append(version)
    reverse = flt.sort == "date"
    groups = []
    for name, versions in by_name.items():
        versions.sort(key=lambda v: _sort_key(flt.sort, v), reverse=reverse)
        groups.append(AdapterGroup(name, tuple(versions)))
    groups.sort(key=lambda g: _sort_key(flt.sort, g.versions[0]), reverse=reverse)
    return groups


@dataclass(frozen=True)
class FilterChoices:
    """The values the filters can take in this workspace (for drop-down lists)."""

    base_models: tuple[str, ...]
    datasets: tuple[str, ...]
    """Dataset names that adapters were trained on."""
    tags: tuple[str, ...]


def filter_choices(reg: Registry) -> FilterChoices:
    """Base models, datasets and tags that appear among the adapter versions."""
    rows = [VersionSummary.from_row(r) for r in reg.adapters.versions(include_deleted=True)]
    return FilterChoices(
        base_models=tuple(sorted({v.base_model for v in rows if v.base_model})),
        datasets=tuple(sorted({v.dataset.split("@")[0] for v in rows if v.dataset})),
        tags=tuple(sorted({t for v in rows for t in v.tags})),
    )


def live_refs(reg: Registry) -> list[str]:
    """``NAME@N`` of every adapter version that can be exported, newest first per name."""
    return [v.ref for g in adapter_catalog(reg) for v in g.versions]
