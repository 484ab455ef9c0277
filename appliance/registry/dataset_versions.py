"""Dataset versions in the registry, and the metadata file beside each (``reg.datasets``).

The metadata file (``datasets/NAME-VERSION.enc.meta.json`` beside the encrypted file) holds the
row, so ``appliance verify --rebuild-index`` can recover the version from the folder alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from appliance.errors import NotFoundError
from appliance.folders import sidecar_path, write_meta_file
from appliance.registry.base_models import check_fields
from appliance.registry.core import Core
from appliance.registry.refs import check_name, now
from appliance.registry.rows import DatasetVersionRow

DATASET_FIELDS = frozenset(
    {
        "object_id",
        "path",
        "sha256",
        "file_sha256",
        "kind",
        "format",
        "source_name",
        "rows",
        "train_rows",
        "eval_rows",
        "duplicates_removed",
        "skipped_rows",
        "skipped_detail",
        "chars",
        "eval_fraction",
        "seed",
        "stats",
    }
)


class DatasetVersions:
    """The ``dataset_versions`` table (the contract with the datasets layer)."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def add_version(self, name: str, **fields: Any) -> int:
        """Insert the next version of dataset ``name`` and audit it; returns the version number.

        When the version has a file (``path``), its metadata file is written beside it as the
        last step of the transaction, so the folder alone can rebuild the row.
        """
        check_name(name, "dataset name")
        check_fields(fields, DATASET_FIELDS, "dataset version")
        core = self._core
        with core.transaction():
            version = core.next_version("dataset_versions", name)
            core.insert(
                "dataset_versions", {"name": name, "version": version, **fields, **core.stamp()}
            )
            core.audit(
                "dataset.import",
                f"{name}@{version}",
                {"sha256": fields.get("sha256"), "rows": fields.get("rows")},
            )
            self.write_meta(self.version(name, version))
            self.backfill_meta()
        return version

    def write_meta(self, row: DatasetVersionRow) -> Path | None:
        """Write the metadata file beside a dataset version's encrypted file; returns it.

        Deleted versions keep theirs (their file is gone): a rebuilt registry must still know
        the version, or lineage would lose it and its number could be given out again.
        """
        if not row.get("path"):
            return None
        record = {k: v for k, v in row.items() if k != "id"}
        target = sidecar_path(self._core.ws.home / str(row["path"]))
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_meta_file(target, "dataset_version", record)
        return target

    def backfill_meta(self) -> list[str]:
        """Write the metadata files that versions imported by older releases lack.

        Returns:
            ``NAME@VERSION`` of each version that got one.
        """
        home = self._core.ws.home
        done = []
        for row in self.versions(include_deleted=True):
            path = row.get("path")
            if not path or sidecar_path(home / path).exists():
                continue
            if (home / path).exists() or row["deleted_at"] is not None:
                self.write_meta(row)
                done.append(f"{row['name']}@{row['version']}")
        return done

    def version(
        self, name: str, version: int | None = None, *, include_deleted: bool = False
    ) -> DatasetVersionRow:
        """One dataset version: the latest non-deleted one when ``version`` is None.

        Raises:
            NotFoundError: no such dataset or version; the message names those that exist.
        """
        if version is None:
            rows = self._core.query(
                "SELECT * FROM dataset_versions WHERE name = ? AND deleted_at IS NULL "
                "ORDER BY version DESC LIMIT 1",
                (name,),
            )
        else:
            rows = self._core.query(
                "SELECT * FROM dataset_versions WHERE name = ? AND version = ?", (name, version)
            )
            if rows and rows[0]["deleted_at"] is not None and not include_deleted:
                raise NotFoundError(
                    f"dataset {name}@{version} was deleted at {rows[0]['deleted_at']}"
                )
        if not rows:
            live = self.versions(name)
            if live:
                versions = ", ".join(str(r["version"]) for r in live)
                raise NotFoundError(
                    f"dataset {name!r} has no version {version} (versions: {versions})"
                )
            names = sorted({r["name"] for r in self.versions()})
            have = ", ".join(names) if names else "none yet"
            raise NotFoundError(f"no dataset named {name!r} (datasets: {have})")
        return self._typed(rows[0])

    def by_id(self, version_id: int) -> DatasetVersionRow | None:
        """The dataset version with this id (deleted or not), or None."""
        rows = self._core.query("SELECT * FROM dataset_versions WHERE id = ?", (version_id,))
        return self._typed(rows[0]) if rows else None

    def versions(
        self, name: str | None = None, *, include_deleted: bool = False
    ) -> list[DatasetVersionRow]:
        """Dataset versions (of ``name``, or all), by name then version."""
        clauses, params = [], []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if not include_deleted:
            clauses.append("deleted_at IS NULL")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._core.query(
            f"SELECT * FROM dataset_versions {where} ORDER BY name, version",  # noqa: S608
            tuple(params),
        )
        return [self._typed(r) for r in rows]

    def delete_version(self, name: str, version: int) -> None:
        """Mark a dataset version deleted (the row stays for lineage) and audit it."""
        core = self._core
        with core.transaction():
            row = self.version(name, version)
            core.conn.execute(
                "UPDATE dataset_versions SET deleted_at = ? WHERE id = ?", (now(), row["id"])
            )
            core.audit("dataset.delete", f"{name}@{version}", {"sha256": row["sha256"]})
            self.write_meta(self.version(name, version, include_deleted=True))

    def _typed(self, row: dict[str, Any]) -> DatasetVersionRow:
        return cast(DatasetVersionRow, self._core.row("dataset_versions", row))
