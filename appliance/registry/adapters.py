"""Adapter versions, tags, exports and lineage in the registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from appliance.errors import NotFoundError, RegistryError, UsageError
from appliance.folders import artifact_sha256, write_meta
from appliance.fsutil import fsync_dir
from appliance.registry.records import RecordsMixin
from appliance.registry.refs import Ref, check_name, check_tag, now, os_user, parse_ref

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


class AdaptersMixin(RecordsMixin):
    """Adapter versions, tags, exports, lineage."""

    # -- adapter versions ----------------------------------------------------------------------

    def add_adapter_version(
        self,
        name: str,
        *,
        run_id: str | None,
        path: str | None = None,
        move_from: Path | None = None,
        sha256: str | None = None,
        metrics: dict[str, Any] | None = None,
        lib_versions: dict[str, Any] | None = None,
    ) -> int:
        """Register the next version of adapter ``name``; returns the version number.

        Give exactly one of ``path`` (a folder or file already in place, relative to the
        workspace home) or ``move_from`` (a finished folder, e.g. under ``ws.tmp_dir``, that is
        renamed to ``adapters/NAME/VERSION`` inside the transaction and moved back if the
        registry write fails). The folder gets a ``meta.json`` with the lineage.

        Args:
            name: adapter name; versions count up per name from 1.
            run_id: the run that produced it.
            sha256: of the artifact (see :func:`artifact_sha256`); computed when None.
            metrics: final metrics, e.g. ``{"eval_loss": 1.23, "train_loss": 1.1}``.
            lib_versions: ``{"torch": ..., "transformers": ..., "peft": ..., "bitsandbytes": ...}``.
        """
        check_name(name, "adapter name")
        if (path is None) == (move_from is None):
            raise RegistryError("add_adapter_version needs exactly one of path= or move_from=")
        moved: tuple[Path, Path] | None = None
        try:
            with self.transaction():
                version = self._next_version("adapter_versions", name)
                if run_id is not None:
                    self.run(run_id)
                if move_from is not None:
                    rel = f"adapters/{name}/{version}"
                    target = self.ws.home / rel
                    if target.exists():
                        raise RegistryError(
                            f"{target} exists but is not registered; run 'appliance verify "
                            "--rebuild-index' or move it away"
                        )
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    os.replace(move_from, target)
                    fsync_dir(target.parent)
                    moved = (target, Path(move_from))
                else:
                    rel = str(path)
                    target = self.ws.home / rel
                    if not target.exists():
                        raise RegistryError(f"adapter artifact {target} does not exist")
                digest = sha256 or artifact_sha256(target)
                self._insert(
                    "adapter_versions",
                    {
                        "name": name,
                        "version": version,
                        "run_id": run_id,
                        "path": rel,
                        "sha256": digest,
                        "metrics": metrics or {},
                        "lib_versions": lib_versions or {},
                        **self._stamp(),
                    },
                )
                self.audit("adapter.create", f"{name}@{version}", {"run": run_id, "sha256": digest})
                if target.is_dir():
                    write_meta(target, "adapter_version", self._adapter_meta(name, version))
        except BaseException:
            if moved is not None:
                os.replace(moved[0], moved[1])
            raise
        return version

    def _adapter_meta(self, name: str, version: int) -> dict[str, Any]:
        row = self.adapter_version(f"{name}@{version}")
        return {k: v for k, v in row.items() if k not in ("id", "tags", "run_state")}

    def adapter_version(self, ref: str | Ref, *, include_deleted: bool = False) -> dict[str, Any]:
        """The adapter version ``NAME`` (latest), ``NAME@N`` or ``NAME@TAG``.

        Args:
            include_deleted: also return a deleted version named by its number (its lineage
                stays readable); otherwise a deleted version is not found.

        Raises:
            NotFoundError: it does not exist (or was deleted); the message lists what does.
        """
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version is not None:
            rows = self._query(
                f"{_ADAPTER_SELECT} WHERE a.name = ? AND a.version = ?", (r.name, r.version)
            )
            if rows and rows[0]["deleted_at"] is not None and not include_deleted:
                raise NotFoundError(
                    f"adapter {r} was deleted at {rows[0]['deleted_at'][:19].replace('T', ' ')}; "
                    f"its lineage stays ('appliance adapter show {r}'), choose another version"
                )
        elif r.tag is not None:
            rows = self._query(
                f"{_ADAPTER_SELECT} JOIN tags tg ON tg.adapter_version_id = a.id "
                "WHERE tg.name = ? AND tg.tag = ?",
                (r.name, r.tag),
            )
        else:
            rows = self._query(
                f"{_ADAPTER_SELECT} WHERE a.name = ? AND a.deleted_at IS NULL "
                "ORDER BY a.version DESC LIMIT 1",
                (r.name,),
            )
        if not rows:
            raise NotFoundError(self._adapter_missing(r))
        return self._adapter_row(rows[0])

    def _adapter_missing(self, r: Ref) -> str:
        versions = [v for v in self.adapter_versions(r.name)]
        if not versions:
            names = sorted({v["name"] for v in self.adapter_versions()})
            have = ", ".join(names) if names else "none yet; adapters come from training runs"
            return f"no adapter named {r.name!r} (adapters: {have})"
        known = ", ".join(str(v["version"]) for v in versions)
        tags = sorted({t for v in versions for t in v["tags"]})
        extra = f"; tags: {', '.join(tags)}" if tags else ""
        return f"adapter {r} does not exist (versions of {r.name}: {known}{extra})"

    def _adapter_row(self, row: dict[str, Any]) -> dict[str, Any]:
        out = self._row("adapter_versions", row)
        tag_list = out.pop("tag_list", None)
        out["tags"] = sorted(tag_list.split(",")) if tag_list else []
        out["ref"] = f"{out['name']}@{out['version']}"
        return out

    def adapter_versions(
        self, name: str | None = None, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Adapter versions (of ``name`` or all), by name then version, with lineage columns.

        Deleted versions are left out unless ``include_deleted``.
        """
        live = "" if include_deleted else "a.deleted_at IS NULL"
        if name is None:
            where = f"WHERE {live}" if live else ""
            rows = self._query(f"{_ADAPTER_SELECT} {where} ORDER BY a.name, a.version")
        else:
            where = f"AND {live}" if live else ""
            rows = self._query(
                f"{_ADAPTER_SELECT} WHERE a.name = ? {where} ORDER BY a.version", (name,)
            )
        return [self._adapter_row(r) for r in rows]

    def delete_adapter_version(self, ref: str | Ref) -> dict[str, Any]:
        """Mark an adapter version deleted and audit it; its row stays, so lineage, exports and
        audit rows that name it keep their meaning. The caller removes its folder.

        Returns:
            The version's row as it was before the deletion.

        Raises:
            NotFoundError: no such live version.
            RegistryError: it carries a tag (a tag must always name a version that exists).
        """
        with self.transaction():
            adapter = self.adapter_version(ref)
            if adapter["tags"]:
                tags = ", ".join(adapter["tags"])
                raise RegistryError(
                    f"adapter {adapter['ref']} carries the tag(s) {tags}; move or remove them "
                    f"first ('appliance adapter tag {adapter['ref']} TAG --remove'), then delete it"
                )
            self.conn.execute(
                "UPDATE adapter_versions SET deleted_at = ? WHERE id = ?", (now(), adapter["id"])
            )
            self.audit(
                "adapter.delete",
                adapter["ref"],
                {"sha256": adapter["sha256"], "run": adapter["run_id"]},
            )
        return adapter

    # -- tags ----------------------------------------------------------------------------------

    def set_tag(
        self, ref: str | Ref, tag: str, *, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Point ``tag`` of the adapter's name at this version (moving it atomically).

        Args:
            details: more for the audit row (e.g. the promotion gate's figures, an override's
                reason).

        Returns:
            ``{"ref", "tag", "previous"}`` where previous is the version it pointed at, or None.
        """
        check_tag(tag)
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.tag == tag:
            raise UsageError(f"{r} already names the version tagged {tag}")
        with self.transaction():
            target = self.adapter_version(r)
            old = self._query(
                "SELECT a.version FROM tags t JOIN adapter_versions a "
                "ON a.id = t.adapter_version_id WHERE t.name = ? AND t.tag = ?",
                (target["name"], tag),
            )
            previous = old[0]["version"] if old else None
            # One UPSERT: readers see either the old or the new target, never no tag at all.
            self.conn.execute(
                "INSERT INTO tags (name, tag, adapter_version_id, updated_at, updated_by) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name, tag) DO UPDATE SET "
                "adapter_version_id = excluded.adapter_version_id, "
                "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (target["name"], tag, target["id"], now(), os_user()),
            )
            self.audit(
                "adapter.tag",
                target["ref"],
                {
                    **(details or {}),
                    "tag": tag,
                    "previous": previous,
                    "version": target["version"],
                },
            )
        return {"ref": target["ref"], "tag": tag, "previous": previous}

    def remove_tag(self, name: str, tag: str) -> None:
        """Remove ``tag`` from adapter ``name``.

        Raises:
            NotFoundError: the tag is not set.
        """
        with self.transaction():
            cur = self.conn.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (name, tag))
            if cur.rowcount == 0:
                raise NotFoundError(f"adapter {name} has no tag {tag!r}")
            self.audit("adapter.untag", name, {"tag": tag})

    def tags(self, name: str | None = None) -> list[dict[str, Any]]:
        """Tags as ``{name, tag, version, updated_at, updated_by}``."""
        sql = (
            "SELECT t.name, t.tag, a.version, t.updated_at, t.updated_by FROM tags t "
            "JOIN adapter_versions a ON a.id = t.adapter_version_id"
        )
        if name is not None:
            return self._query(sql + " WHERE t.name = ? ORDER BY t.tag", (name,))
        return self._query(sql + " ORDER BY t.name, t.tag")

    # -- exports -------------------------------------------------------------------------------

    def add_export(
        self,
        ref: str | Ref,
        *,
        format: str,
        path: Path | str,
        sha256: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Record an export of an adapter version (a file or folder) and audit it; returns its id.

        ``path`` is stored relative to the workspace home when inside it, else absolute.
        """
        absolute = Path(path) if Path(path).is_absolute() else self.ws.home / path
        try:
            stored = str(absolute.relative_to(self.ws.home))
        except ValueError:
            stored = str(absolute)
        with self.transaction():
            adapter = self.adapter_version(ref)
            digest = sha256 or artifact_sha256(absolute)
            export_id = self._insert(
                "exports",
                {
                    "adapter_version_id": adapter["id"],
                    "format": format,
                    "path": stored,
                    "sha256": digest,
                    "details": details or {},
                    **self._stamp(),
                },
            )
            self.audit(
                "export.create",
                adapter["ref"],
                {"format": format, "path": stored, "sha256": digest},
            )
        return export_id

    def exports(self, ref: str | Ref | None = None) -> list[dict[str, Any]]:
        """Exports (of one adapter version, or all), oldest first."""
        sql = (
            "SELECT e.*, a.name || '@' || a.version AS adapter FROM exports e "
            "JOIN adapter_versions a ON a.id = e.adapter_version_id"
        )
        if ref is None:
            rows = self._query(sql + " ORDER BY e.id")
        else:
            adapter = self.adapter_version(ref, include_deleted=True)
            rows = self._query(
                sql + " WHERE e.adapter_version_id = ? ORDER BY e.id", (adapter["id"],)
            )
        return [self._row("exports", r) for r in rows]

    # -- lineage -------------------------------------------------------------------------------

    def adapter_lineage(self, ref: str | Ref) -> dict[str, Any]:
        """Everything that made an adapter version: run, config, seed, base, dataset, metrics.

        A deleted version's lineage stays readable (``deleted_at`` says when it went).
        """
        adapter = self.adapter_version(ref, include_deleted=True)
        run = self.run(adapter["run_id"]) if adapter["run_id"] else None
        base = dataset = None
        if run is not None:
            model = self._query("SELECT * FROM base_models WHERE id = ?", (run["base_model_id"],))
            if model:
                m = model[0]
                base = {
                    "name": m["name"],
                    "sha256": m["sha256"],
                    "architecture": m["architecture"],
                    "parameters": m["parameters"],
                }
            if run["dataset_version_id"] is not None:
                ds = self._row(
                    "dataset_versions",
                    self._query(
                        "SELECT * FROM dataset_versions WHERE id = ?", (run["dataset_version_id"],)
                    )[0],
                )
                dataset = {
                    "name": ds["name"],
                    "version": ds["version"],
                    "sha256": ds["sha256"],
                    "rows": ds["rows"],
                    "deleted_at": ds["deleted_at"],
                }
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
            "run": None
            if run is None
            else {
                "id": run["id"],
                "state": run["state"],
                "started_at": run["started_at"],
                "finished_at": run["finished_at"],
            },
            "config": run["config"] if run else None,
            "seed": run["seed"] if run else None,
            "base_model": base,
            "dataset": dataset,
            "exports": [
                {k: e[k] for k in ("format", "path", "sha256", "created_at")}
                for e in self.exports(adapter["ref"])
            ],
        }

    def adapters_from_dataset(self, name: str, version: int | None = None) -> list[dict[str, Any]]:
        """Every adapter version trained on dataset ``name`` (one version, or any)."""
        if version is None:
            rows = self._query(
                f"{_ADAPTER_SELECT} WHERE d.name = ? ORDER BY a.name, a.version", (name,)
            )
        else:
            rows = self._query(
                f"{_ADAPTER_SELECT} WHERE d.name = ? AND d.version = ? ORDER BY a.name, a.version",
                (name, version),
            )
        return [self._adapter_row(r) for r in rows]

    def adapters_from_base_model(self, name: str) -> list[dict[str, Any]]:
        """Every adapter version trained on base model ``name``."""
        rows = self._query(
            f"{_ADAPTER_SELECT} WHERE m.name = ? ORDER BY a.name, a.version", (name,)
        )
        return [self._adapter_row(r) for r in rows]
