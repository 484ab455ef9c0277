"""Evaluation results of adapter versions, and the golden set of each adapter name.

An evaluation row is lineage: which adapter version (and its sha256) was scored on which dataset
version (and its sha256), which split, with which settings and library versions, by whom and
when; its figures for the adapter and, when computed, for the base model beside it. Only
numbers are stored: never a row's text or a generated answer (the registry is plaintext).

A golden set is a dataset version attached to an adapter name; the promotion gate
(:mod:`appliance.evaluation.gate`) compares versions on it before the ``production`` tag moves.
"""

from __future__ import annotations

from typing import Any

from appliance.errors import NotFoundError, UsageError
from appliance.registry.adapters import AdaptersMixin
from appliance.registry.refs import Ref, check_name, now, os_user

SPLITS = ("eval", "train", "all")
GATE_METRICS = ("answer_loss", "contains")
"""What a golden set compares: answer loss (lower is better) or contains-match (higher)."""

_EVAL_SELECT = """
SELECT e.*, a.name AS adapter, a.version AS adapter_version,
       d.name AS dataset, d.version AS dataset_version
FROM evaluations e
JOIN adapter_versions a ON a.id = e.adapter_version_id
JOIN dataset_versions d ON d.id = e.dataset_version_id
"""


class EvaluationsMixin(AdaptersMixin):
    """Evaluation results and golden sets."""

    # -- evaluations ---------------------------------------------------------------------------

    def add_evaluation(
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
        with self.transaction():
            adapter = self.adapter_version(ref)
            ds = self.dataset_version(dataset, dataset_version, include_deleted=True)
            row_id = self._insert(
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
                    **self._stamp(),
                },
            )
            self.audit(
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

    def evaluations(
        self, ref: str | Ref | None = None, *, dataset_version_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Evaluation rows (of one adapter version, optionally on one dataset version), oldest
        first, with ``adapter`` (NAME@N) and ``dataset`` (NAME@V) references joined in."""
        clauses: list[str] = []
        params: list[Any] = []
        if ref is not None:
            clauses.append("e.adapter_version_id = ?")
            params.append(self.adapter_version(ref, include_deleted=True)["id"])
        if dataset_version_id is not None:
            clauses.append("e.dataset_version_id = ?")
            params.append(dataset_version_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"{_EVAL_SELECT} {where} ORDER BY e.id", tuple(params))
        out = []
        for row in rows:
            item = self._row("evaluations", row)
            item["adapter"] = f"{item['adapter']}@{item.pop('adapter_version')}"
            item["dataset"] = f"{item['dataset']}@{item.pop('dataset_version')}"
            out.append(item)
        return out

    # -- golden sets ---------------------------------------------------------------------------

    def set_golden_set(
        self, name: str, dataset: str, version: int, metric: str = "answer_loss"
    ) -> dict[str, Any]:
        """Attach dataset version ``dataset@version`` as the golden set of adapter ``name``.

        Returns:
            The golden set as :meth:`golden_set` gives it, with ``previous`` (the dataset
            reference it replaced, or None).

        Raises:
            UsageError: an unknown metric.
            NotFoundError: no adapter of that name, or no such (live) dataset version.
        """
        check_name(name, "adapter name")
        if metric not in GATE_METRICS:
            raise UsageError(
                f"unknown gate metric {metric!r}; use answer_loss (lower is better) or contains "
                "(share of reference answers found in the answers)"
            )
        with self.transaction():
            if not self.adapter_versions(name):
                raise NotFoundError(self._adapter_missing(Ref(name)))
            ds = self.dataset_version(dataset, version)
            previous = self.golden_set(name)
            self.conn.execute(
                "INSERT INTO golden_sets (name, dataset_version_id, metric, updated_at, "
                "updated_by) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "dataset_version_id = excluded.dataset_version_id, metric = excluded.metric, "
                "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (name, ds["id"], metric, now(), os_user()),
            )
            self.audit(
                "adapter.golden",
                name,
                {
                    "dataset": f"{ds['name']}@{ds['version']}",
                    "sha256": ds["sha256"],
                    "metric": metric,
                    "previous": previous["dataset"] if previous else None,
                },
            )
            current = self.golden_set(name)
        assert current is not None
        return {**current, "previous": previous["dataset"] if previous else None}

    def golden_set(self, name: str) -> dict[str, Any] | None:
        """The golden set of adapter ``name``: ``{name, dataset (NAME@V), dataset_name,
        dataset_version, dataset_version_id, sha256, metric, deleted_at, updated_at,
        updated_by}``, or None when none is attached."""
        rows = self._query(
            "SELECT g.name, g.metric, g.updated_at, g.updated_by, g.dataset_version_id, "
            "d.name AS dataset_name, d.version AS dataset_version, d.sha256 AS sha256, "
            "d.kind AS kind, d.deleted_at AS deleted_at FROM golden_sets g "
            "JOIN dataset_versions d ON d.id = g.dataset_version_id WHERE g.name = ?",
            (name,),
        )
        if not rows:
            return None
        row = dict(rows[0])
        row["dataset"] = f"{row['dataset_name']}@{row['dataset_version']}"
        return row

    def remove_golden_set(self, name: str) -> None:
        """Detach the golden set of adapter ``name`` (tagging is then ungated again).

        Raises:
            NotFoundError: it has none.
        """
        with self.transaction():
            current = self.golden_set(name)
            if current is None:
                raise NotFoundError(f"adapter {name} has no golden set")
            self.conn.execute("DELETE FROM golden_sets WHERE name = ?", (name,))
            self.audit("adapter.golden.remove", name, {"dataset": current["dataset"]})
