"""Adapter versions and their lineage in the registry (``reg.adapters``).

Rows only: the version's folder (``adapters/NAME/VERSION`` with its ``meta.json``) is put in
place by the adapters layer (``appliance.adapter_folders.place``), inside the transaction that
adds the row.
"""

from __future__ import annotations

from typing import Any, cast

from appliance.errors import NotFoundError, RegistryError
from appliance.folders import artifact_sha256
from appliance.registry.base_models import BaseModels
from appliance.registry.core import Core
from appliance.registry.dataset_versions import DatasetVersions
from appliance.registry.refs import Ref, check_name, now, parse_ref
from appliance.registry.rows import (
    AdapterVersionRow,
    LineageBaseModel,
    LineageDataset,
    LineageExport,
    LineageRow,
    LineageRun,
)
from appliance.registry.runs import Runs

_ADAPTER_SELECT = """
SELECT a.*, r.state AS run_state, r.seed AS seed,
       m.name AS base_model, m.sha256 AS base_model_sha256,
       d.name AS dataset, d.version AS dataset_version, d.sha256 AS dataset_sha256,
       (SELECT group_concat(t.tag, ',') FROM tags t WHERE t.adapter_version_id = a.id) AS tag_list
FROM adapter_versions a
LEFT JOIN runs r ON r.id = a.run_id
LEFT JOIN base_models m ON m.id = r.base_model_id
LEFT JOIN dataset_versions d ON d.id = r.dataset_version_id
"""


class AdapterVersions:
    """The ``adapter_versions`` table, and the lineage of a version across the other tables."""

    def __init__(
        self, core: Core, models: BaseModels, datasets: DatasetVersions, runs: Runs
    ) -> None:
        self._core = core
        self._models = models
        self._datasets = datasets
        self._runs = runs

    def next_version(self, name: str) -> int:
        """The number the next version of ``name`` gets; call inside the write transaction
        that adds it, so nobody else takes the number in between."""
        check_name(name, "adapter name")
        return self._core.next_version("adapter_versions", name)

    def add_version(
        self,
        name: str,
        *,
        run_id: str | None,
        path: str,
        version: int | None = None,
        sha256: str | None = None,
        metrics: dict[str, Any] | None = None,
        lib_versions: dict[str, Any] | None = None,
    ) -> int:
        """Register the next version of adapter ``name``, whose artifact is already in place at
        ``path``; returns the version number.

        Args:
            name: adapter name; versions count up per name from 1.
            run_id: the run that produced it.
            path: the folder (or file), relative to the workspace home.
            version: the number the caller placed it under (from :meth:`next_version` in the
                same transaction); refused when it is not the next one.
            sha256: of the artifact (see :func:`artifact_sha256`); computed when None.
            metrics: final metrics, e.g. ``{"eval_loss": 1.23, "train_loss": 1.1}``.
            lib_versions: ``{"torch": ..., "transformers": ..., "peft": ..., "bitsandbytes": ...}``.
        """
        check_name(name, "adapter name")
        core = self._core
        with core.transaction():
            next_version = core.next_version("adapter_versions", name)
            if version is not None and version != next_version:
                raise RegistryError(
                    f"adapter {name}@{version} cannot be registered: the next version of "
                    f"{name} is {next_version}"
                )
            if run_id is not None:
                self._runs.get(run_id)
            target = core.ws.home / path
            if not target.exists():
                raise RegistryError(f"adapter artifact {target} does not exist")
            digest = sha256 or artifact_sha256(target)
            core.insert(
                "adapter_versions",
                {
                    "name": name,
                    "version": next_version,
                    "run_id": run_id,
                    "path": path,
                    "sha256": digest,
                    "metrics": metrics or {},
                    "lib_versions": lib_versions or {},
                    **core.stamp(),
                },
            )
            core.audit(
                "adapter.create", f"{name}@{next_version}", {"run": run_id, "sha256": digest}
            )
        return next_version

    def version(self, ref: str | Ref, *, include_deleted: bool = False) -> AdapterVersionRow:
        """The adapter version ``NAME`` (latest), ``NAME@N`` or ``NAME@TAG``.

        Args:
            include_deleted: also return a deleted version named by its number (its lineage
                stays readable); otherwise a deleted version is not found.

        Raises:
            NotFoundError: it does not exist (or was deleted); the message lists what does.
        """
        r = parse_ref(ref) if isinstance(ref, str) else ref
        query = self._core.query
        if r.version is not None:
            rows = query(
                f"{_ADAPTER_SELECT} WHERE a.name = ? AND a.version = ?", (r.name, r.version)
            )
            if rows and rows[0]["deleted_at"] is not None and not include_deleted:
                raise NotFoundError(
                    f"adapter {r} was deleted at {rows[0]['deleted_at'][:19].replace('T', ' ')}; "
                    f"its lineage stays ('appliance adapter show {r}'), choose another version"
                )
        elif r.tag is not None:
            rows = query(
                f"{_ADAPTER_SELECT} JOIN tags tg ON tg.adapter_version_id = a.id "
                "WHERE tg.name = ? AND tg.tag = ?",
                (r.name, r.tag),
            )
        else:
            rows = query(
                f"{_ADAPTER_SELECT} WHERE a.name = ? AND a.deleted_at IS NULL "
                "ORDER BY a.version DESC LIMIT 1",
                (r.name,),
            )
        if not rows:
            raise NotFoundError(self.missing(r))
        return self._typed(rows[0])

    def missing(self, r: Ref) -> str:
        """Why ``r`` names no version, listing the names, versions and tags that exist."""
        versions = self.versions(r.name)
        if not versions:
            names = sorted({v["name"] for v in self.versions()})
            have = ", ".join(names) if names else "none yet; adapters come from training runs"
            return f"no adapter named {r.name!r} (adapters: {have})"
        known = ", ".join(str(v["version"]) for v in versions)
        tags = sorted({t for v in versions for t in v["tags"]})
        extra = f"; tags: {', '.join(tags)}" if tags else ""
        return f"adapter {r} does not exist (versions of {r.name}: {known}{extra})"

    def versions(
        self, name: str | None = None, *, include_deleted: bool = False
    ) -> list[AdapterVersionRow]:
        """Adapter versions (of ``name`` or all), by name then version, with lineage columns.

        Deleted versions are left out unless ``include_deleted``.
        """
        live = "" if include_deleted else "a.deleted_at IS NULL"
        if name is None:
            where = f"WHERE {live}" if live else ""
            rows = self._core.query(f"{_ADAPTER_SELECT} {where} ORDER BY a.name, a.version")
        else:
            where = f"AND {live}" if live else ""
            rows = self._core.query(
                f"{_ADAPTER_SELECT} WHERE a.name = ? {where} ORDER BY a.version", (name,)
            )
        return [self._typed(r) for r in rows]

    def delete_version(self, ref: str | Ref) -> AdapterVersionRow:
        """Mark an adapter version deleted and audit it; its row stays, so lineage, exports and
        audit rows that name it keep their meaning. The caller removes its folder.

        Returns:
            The version's row as it was before the deletion.

        Raises:
            NotFoundError: no such live version.
            RegistryError: it carries a tag (a tag must always name a version that exists).
        """
        core = self._core
        with core.transaction():
            adapter = self.version(ref)
            if adapter["tags"]:
                tags = ", ".join(adapter["tags"])
                raise RegistryError(
                    f"adapter {adapter['ref']} carries the tag(s) {tags}; move or remove them "
                    f"first ('appliance adapter tag {adapter['ref']} TAG --remove'), then delete it"
                )
            core.conn.execute(
                "UPDATE adapter_versions SET deleted_at = ? WHERE id = ?", (now(), adapter["id"])
            )
            core.audit(
                "adapter.delete",
                adapter["ref"],
                {"sha256": adapter["sha256"], "run": adapter["run_id"]},
            )
        return adapter

    def lineage(self, ref: str | Ref) -> LineageRow:
        """Everything that made an adapter version: run, config, seed, base, dataset, metrics.

        A deleted version's lineage stays readable (``deleted_at`` says when it went).
        """
        adapter = self.version(ref, include_deleted=True)
        run = self._runs.get(adapter["run_id"]) if adapter["run_id"] else None
        base: LineageBaseModel | None = None
        dataset: LineageDataset | None = None
        if run is not None:
            m = self._models.by_id(run["base_model_id"]) if run["base_model_id"] else None
            if m is not None:
                base = {
                    "name": m["name"],
                    "sha256": m["sha256"],
                    "architecture": m["architecture"],
                    "parameters": m["parameters"],
                }
            ds = (
                self._datasets.by_id(run["dataset_version_id"])
                if run["dataset_version_id"] is not None
                else None
            )
            if ds is not None:
                dataset = {
                    "name": ds["name"],
                    "version": ds["version"],
                    "sha256": ds["sha256"],
                    "rows": ds["rows"],
                    "deleted_at": ds["deleted_at"],
                }
        run_summary: LineageRun | None = (
            None
            if run is None
            else {
                "id": run["id"],
                "state": run["state"],
                "started_at": run["started_at"],
                "finished_at": run["finished_at"],
            }
        )
        exports = self._core.query(
            "SELECT format, path, sha256, created_at FROM exports "
            "WHERE adapter_version_id = ? ORDER BY id",
            (adapter["id"],),
        )
        return {
            "name": adapter["name"],
            "version": adapter["version"],
            "ref": adapter["ref"],
            "tags": adapter["tags"],
            "path": adapter["path"],
            "sha256": adapter["sha256"],
            "created_at": adapter["created_at"],
            "created_by": adapter["created_by"],
            "deleted_at": adapter["deleted_at"],
            "metrics": adapter["metrics"],
            "lib_versions": adapter["lib_versions"],
            "run": run_summary,
            "config": run["config"] if run else None,
            "seed": run["seed"] if run else None,
            "base_model": base,
            "dataset": dataset,
            "exports": [cast(LineageExport, e) for e in exports],
        }

    def from_dataset(self, name: str, version: int | None = None) -> list[AdapterVersionRow]:
        """Every adapter version trained on dataset ``name`` (one version, or any)."""
        if version is None:
            rows = self._core.query(
                f"{_ADAPTER_SELECT} WHERE d.name = ? ORDER BY a.name, a.version", (name,)
            )
        else:
            rows = self._core.query(
                f"{_ADAPTER_SELECT} WHERE d.name = ? AND d.version = ? ORDER BY a.name, a.version",
                (name, version),
            )
        return [self._typed(r) for r in rows]

    def from_base_model(self, name: str) -> list[AdapterVersionRow]:
        """Every adapter version trained on base model ``name``."""
        rows = self._core.query(
            f"{_ADAPTER_SELECT} WHERE m.name = ? ORDER BY a.name, a.version", (name,)
        )
        return [self._typed(r) for r in rows]

    def _typed(self, row: dict[str, Any]) -> AdapterVersionRow:
        out = self._core.row("adapter_versions", row)
        tag_list = out.pop("tag_list", None)
        out["tags"] = sorted(tag_list.split(",")) if tag_list else []
        out["ref"] = f"{out['name']}@{out['version']}"
        return cast(AdapterVersionRow, out)
