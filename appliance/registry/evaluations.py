"""Evaluation results of adapter versions in the registry (``reg.evaluations``).

An evaluation row is lineage: which adapter version (and its sha256) was scored on which dataset
version (and its sha256), which split, with which settings and library versions, by whom and
when; its figures for the adapter and, when computed, for the base model beside it. Only
numbers are stored: never a row's text or a generated answer (the registry is plaintext).
"""

from __future__ import annotations

from typing import Any, cast

from appliance.errors import UsageError
from appliance.registry.adapter_versions import AdapterVersions
from appliance.registry.core import Core
from appliance.registry.dataset_versions import DatasetVersions
from appliance.registry.refs import Ref
from appliance.registry.rows import EvaluationRow

SPLITS = ("eval", "train", "all")

_EVAL_SELECT = """
SELECT e.*, a.name AS adapter, a.version AS adapter_version,
       d.name AS dataset, d.version AS dataset_version
FROM evaluations e
JOIN adapter_versions a ON a.id = e.adapter_version_id
JOIN dataset_versions d ON d.id = e.dataset_version_id
"""


class Evaluations:
    """The ``evaluations`` table."""

    def __init__(self, core: Core, adapters: AdapterVersions, datasets: DatasetVersions) -> None:
        self._core = core
        self._adapters = adapters
        self._datasets = datasets

    def add(
        self,
        ref: str | Ref,
        *,
        dataset: str,
        dataset_version: int,
        split: str,
        metrics: dict[str, Any],
        base_metrics: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        lib_versions: dict[str, Any] | None = None,
        seconds: float | None = None,
    ) -> int:
        """Record the scores of adapter version ``ref`` on a dataset version; returns the row id.

        The dataset's and the adapter's sha256 are copied from their rows, so a later reader
        can tell the figures belong to exactly those bytes.

        Raises:
            UsageError: an unknown split.
            NotFoundError: no such adapter or dataset version.
        """
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        core = self._core
        with core.transaction():
            adapter = self._adapters.version(ref)
            ds = self._datasets.version(dataset, dataset_version, include_deleted=True)
            row_id = core.insert(
                "evaluations",
                {
                    "adapter_version_id": adapter["id"],
                    "adapter_sha256": adapter["sha256"],
                    "dataset_version_id": ds["id"],
                    "dataset_sha256": ds["sha256"],
                    "split": split,
                    "metrics": metrics,
                    "base_metrics": base_metrics,
                    "settings": settings or {},
                    "lib_versions": lib_versions or {},
                    "seconds": seconds,
                    **core.stamp(),
                },
            )
            core.audit(
                "eval.create",
                adapter["ref"],
                {
                    "id": row_id,
                    "dataset": f"{ds['name']}@{ds['version']}",
                    "dataset_sha256": ds["sha256"],
                    "split": split,
                    "answer_loss": metrics.get("answer_loss"),
                    "contains": metrics.get("contains"),
                },
            )
        return row_id

    def all(
        self, ref: str | Ref | None = None, *, dataset_version_id: int | None = None
    ) -> list[EvaluationRow]:
        """Evaluation rows (of one adapter version, optionally on one dataset version), oldest
        first, with ``adapter`` (NAME@N) and ``dataset`` (NAME@V) references joined in."""
        clauses: list[str] = []
        params: list[Any] = []
        if ref is not None:
            clauses.append("e.adapter_version_id = ?")
            params.append(self._adapters.version(ref, include_deleted=True)["id"])
        if dataset_version_id is not None:
            clauses.append("e.dataset_version_id = ?")
            params.append(dataset_version_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._core.query(f"{_EVAL_SELECT} {where} ORDER BY e.id", tuple(params))
        out = []
        for row in rows:
            item = self._core.row("evaluations", row)
            item["adapter"] = f"{item['adapter']}@{item.pop('adapter_version')}"
            item["dataset"] = f"{item['dataset']}@{item.pop('dataset_version')}"
            out.append(cast(EvaluationRow, item))
        return out
