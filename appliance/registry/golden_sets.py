"""The golden set of each adapter name in the registry (``reg.golden_sets``).

A golden set is a dataset version attached to an adapter name; the promotion gate
(:mod:`appliance.evaluation.gate`) compares versions on it before the ``production`` tag moves.
"""

from __future__ import annotations

from typing import cast

from appliance.errors import NotFoundError, UsageError
from appliance.registry.adapter_versions import AdapterVersions
from appliance.registry.core import Core
from appliance.registry.dataset_versions import DatasetVersions
from appliance.registry.refs import Ref, check_name, now, os_user
from appliance.registry.rows import GoldenSetChange, GoldenSetRow

GATE_METRICS = ("answer_loss", "contains")
"""What a golden set compares: answer loss (lower is better) or contains-match (higher)."""


class GoldenSets:
    """The ``golden_sets`` table: one dataset version per adapter name."""

    def __init__(self, core: Core, adapters: AdapterVersions, datasets: DatasetVersions) -> None:
        self._core = core
        self._adapters = adapters
        self._datasets = datasets

    def set(
        self, name: str, dataset: str, version: int, metric: str = "answer_loss"
    ) -> GoldenSetChange:
        """Attach dataset version ``dataset@version`` as the golden set of adapter ``name``.

        Returns:
            The golden set as :meth:`get` gives it, with ``previous`` (the dataset
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
        core = self._core
        with core.transaction():
            if not self._adapters.versions(name):
                raise NotFoundError(self._adapters.missing(Ref(name)))
            ds = self._datasets.version(dataset, version)
            previous = self.get(name)
            core.conn.execute(
                "INSERT INTO golden_sets (name, dataset_version_id, metric, updated_at, "
                "updated_by) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "dataset_version_id = excluded.dataset_version_id, metric = excluded.metric, "
                "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (name, ds["id"], metric, now(), os_user()),
            )
            core.audit(
                "adapter.golden",
                name,
                {
                    "dataset": f"{ds['name']}@{ds['version']}",
                    "sha256": ds["sha256"],
                    "metric": metric,
                    "previous": previous["dataset"] if previous else None,
                },
            )
            current = self.get(name)
        assert current is not None
        return {**current, "previous": previous["dataset"] if previous else None}

    def get(self, name: str) -> GoldenSetRow | None:
        """The golden set of adapter ``name``: ``{name, dataset (NAME@V), dataset_name,
        dataset_version, dataset_version_id, sha256, metric, deleted_at, updated_at,
        updated_by}``, or None when none is attached."""
        rows = self._core.query(
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
        return cast(GoldenSetRow, row)

    def remove(self, name: str) -> None:
        """Detach the golden set of adapter ``name`` (tagging is then ungated again).

        Raises:
            NotFoundError: it has none.
        """
        core = self._core
        with core.transaction():
            current = self.get(name)
            if current is None:
                raise NotFoundError(f"adapter {name} has no golden set")
            core.conn.execute("DELETE FROM golden_sets WHERE name = ?", (name,))
            core.audit("adapter.golden.remove", name, {"dataset": current["dataset"]})
