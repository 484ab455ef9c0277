"""Base models, dataset versions and runs in the registry."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import NotFoundError, RegistryError, UsageError
from appliance.folders import sidecar_path, write_meta, write_meta_file
from appliance.registry.core import RegistryBase
from appliance.registry.refs import check_name, now
from appliance.registry.schema import RUN_STATES

BASE_MODEL_FIELDS = frozenset(
    {
        "format",
        "source",
        "source_sha256",
        "linked",
        "path",
        "sha256",
        "manifest",
        "architecture",
        "model_type",
        "parameters",
        "dtype",
        "context_length",
        "vocab_size",
        "has_chat_template",
        "total_bytes",
    }
)
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
# A finished run is history; the others may still change (a stopped or failed run resumes).
_RUN_TRANSITIONS = {
    "queued": {"running", "stopped", "failed", "finished"},
    "running": {"running", "stopped", "failed", "finished"},
    "stopped": {"queued", "running", "failed"},
    "failed": {"queued", "running", "failed"},
    "finished": set(),
}


def _check_fields(given: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise RegistryError(f"unknown {what} field(s): {', '.join(unknown)}")


class RecordsMixin(RegistryBase):
    """Base models, dataset versions and runs."""

    # -- base models ---------------------------------------------------------------------------

    def add_base_model(self, name: str, *, audit: bool = True, **fields: Any) -> int:
        """Insert a base model row (and its audit row) in one transaction; returns its id.

        Raises:
            UsageError: a model of that name exists already.
        """
        check_name(name, "model name")
        _check_fields(fields, BASE_MODEL_FIELDS, "base model")
        with self.transaction():
            if self._query("SELECT 1 FROM base_models WHERE name = ?", (name,)):
                raise UsageError(
                    f"a base model named {name!r} exists already; choose another --name"
                )
            model_id = self._insert("base_models", {"name": name, **fields, **self._stamp()})
            if audit:
                self.audit(
                    "model.import",
                    name,
                    {
                        "sha256": fields.get("sha256"),
                        "source": fields.get("source"),
                        "linked": bool(fields.get("linked")),
                        "format": fields.get("format"),
                    },
                )
        return model_id

    def base_model(self, name: str) -> dict[str, Any]:
        """The base model called ``name``.

        Raises:
            NotFoundError: there is none; the message lists the models that exist.
        """
        rows = self._query(
            "SELECT * FROM base_models WHERE name = ? AND deleted_at IS NULL", (name,)
        )
        if not rows:
            names = [r["name"] for r in self.base_models()]
            have = (
                ", ".join(names) if names else "none yet; import one with 'appliance model import'"
            )
            raise NotFoundError(f"no base model named {name!r} (base models: {have})")
        return self._row("base_models", rows[0])

    def base_models(self) -> list[dict[str, Any]]:
        """Every base model, oldest first."""
        rows = self._query("SELECT * FROM base_models WHERE deleted_at IS NULL ORDER BY id")
        return [self._row("base_models", r) for r in rows]

    # -- dataset versions (the contract with the dataset helper) --------------------------------

    def add_dataset_version(self, name: str, **fields: Any) -> int:
        """Insert the next version of dataset ``name`` and audit it; returns the version number.

        When the version has a file (``path``), its metadata file is written beside it as the
        last step of the transaction, so the folder alone can rebuild the row.
        """
        check_name(name, "dataset name")
        _check_fields(fields, DATASET_FIELDS, "dataset version")
        with self.transaction():
            version = self._next_version("dataset_versions", name)
            self._insert(
                "dataset_versions", {"name": name, "version": version, **fields, **self._stamp()}
            )
            self.audit(
                "dataset.import",
                f"{name}@{version}",
                {"sha256": fields.get("sha256"), "rows": fields.get("rows")},
            )
            self.write_dataset_meta(self.dataset_version(name, version))
            self.backfill_dataset_meta()
        return version

    def write_dataset_meta(self, row: dict[str, Any]) -> Path | None:
        """Write the metadata file beside a dataset version's encrypted file; returns it.

        Deleted versions keep theirs (their file is gone): a rebuilt registry must still know
        the version, or lineage would lose it and its number could be given out again.
        """
        if not row.get("path"):
            return None
        record = {k: v for k, v in row.items() if k != "id"}
        target = sidecar_path(self.ws.home / row["path"])
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_meta_file(target, "dataset_version", record)
        return target

    def backfill_dataset_meta(self) -> list[str]:
        """Write the metadata files that versions imported by older releases lack.

        Returns:
            ``NAME@VERSION`` of each version that got one.
        """
        done = []
        for row in self.dataset_versions(include_deleted=True):
            path = row.get("path")
            if not path or sidecar_path(self.ws.home / path).exists():
                continue
            if (self.ws.home / path).exists() or row["deleted_at"] is not None:
                self.write_dataset_meta(row)
                done.append(f"{row['name']}@{row['version']}")
        return done

    def dataset_version(
        self, name: str, version: int | None = None, *, include_deleted: bool = False
    ) -> dict[str, Any]:
        """One dataset version: the latest non-deleted one when ``version`` is None.

        Raises:
            NotFoundError: no such dataset or version; the message names those that exist.
        """
        if version is None:
            rows = self._query(
                "SELECT * FROM dataset_versions WHERE name = ? AND deleted_at IS NULL "
                "ORDER BY version DESC LIMIT 1",
                (name,),
            )
        else:
            rows = self._query(
                "SELECT * FROM dataset_versions WHERE name = ? AND version = ?", (name, version)
            )
            if rows and rows[0]["deleted_at"] is not None and not include_deleted:
                raise NotFoundError(
                    f"dataset {name}@{version} was deleted at {rows[0]['deleted_at']}"
                )
        if not rows:
            live = [r for r in self.dataset_versions(name)]
            if live:
                versions = ", ".join(str(r["version"]) for r in live)
                raise NotFoundError(
                    f"dataset {name!r} has no version {version} (versions: {versions})"
                )
            names = sorted({r["name"] for r in self.dataset_versions()})
            have = ", ".join(names) if names else "none yet"
            raise NotFoundError(f"no dataset named {name!r} (datasets: {have})")
        return self._row("dataset_versions", rows[0])

    def dataset_versions(
        self, name: str | None = None, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Dataset versions (of ``name``, or all), by name then version."""
        clauses, params = [], []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if not include_deleted:
            clauses.append("deleted_at IS NULL")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            f"SELECT * FROM dataset_versions {where} ORDER BY name, version",  # noqa: S608
            tuple(params),
        )
        return [self._row("dataset_versions", r) for r in rows]

    def delete_dataset_version(self, name: str, version: int) -> None:
        """Mark a dataset version deleted (the row stays for lineage) and audit it."""
        with self.transaction():
            row = self.dataset_version(name, version)
            self.conn.execute(
                "UPDATE dataset_versions SET deleted_at = ? WHERE id = ?", (now(), row["id"])
            )
            self.audit("dataset.delete", f"{name}@{version}", {"sha256": row["sha256"]})
            self.write_dataset_meta(self.dataset_version(name, version, include_deleted=True))

    def _next_version(self, table: str, name: str) -> int:
        # Deleted versions count too: a number is never reused for different content.
        row = self.conn.execute(
            f"SELECT COALESCE(MAX(version), 0) FROM {table} WHERE name = ?",  # noqa: S608
            (name,),
        ).fetchone()
        return int(row[0]) + 1

    # -- runs ----------------------------------------------------------------------------------

    def add_run(
        self,
        *,
        base_model: str,
        config: dict[str, Any],
        dataset: str | None = None,
        dataset_version: int | None = None,
        seed: int | None = None,
        path: str | None = None,
        run_id: str | None = None,
        state: str = "queued",
        pid: int | None = None,
    ) -> str:
        """Record a new training run (and write its folder's ``meta.json``); returns its id.

        Args:
            base_model: name of the base model it trains on.
            config: the full training configuration (JSON-serialisable).
            dataset: dataset name; ``dataset_version`` None means its latest version.
            dataset_version: the version trained on.
            seed: the random seed (also expected inside ``config``).
            path: the run folder relative to the workspace home (default ``runs/<id>``).
            run_id: an id chosen by the caller; by default ``run-YYYYmmdd-HHMMSS-xxxxxx``.
            state: the initial state.
            pid: the training process, when already started.
        """
        if state not in RUN_STATES:
            raise RegistryError(f"unknown run state {state!r} (states: {', '.join(RUN_STATES)})")
        run_id = run_id or new_run_id()
        check_name(run_id, "run id")
        path = path or f"runs/{run_id}"
        with self.transaction():
            model = self.base_model(base_model)
            ds = self.dataset_version(dataset, dataset_version) if dataset is not None else None
            stamp = self._stamp()
            fields = {
                "id": run_id,
                "state": state,
                "pid": pid,
                "base_model_id": model["id"],
                "dataset_version_id": ds["id"] if ds else None,
                "config": config,
                "seed": seed,
                "path": path,
                **stamp,
                "started_at": stamp["created_at"] if state == "running" else None,
                "updated_at": stamp["created_at"],
            }
            if self._query("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
                raise RegistryError(f"a run with id {run_id!r} exists already")
            self._insert("runs", fields)
            self.audit(
                "run.create",
                run_id,
                {
                    "base_model": base_model,
                    "dataset": f"{ds['name']}@{ds['version']}" if ds else None,
                    "seed": seed,
                },
            )
            self._write_run_meta(run_id)
        return run_id

    def update_run(
        self,
        run_id: str,
        *,
        state: str | None = None,
        pid: int | None = None,
        failure_reason: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change a run's state (and pid / failure reason); audits state changes.

        Raises:
            RegistryError: the state change is not allowed (e.g. a finished run cannot restart).
        """
        with self.transaction():
            run = self.run(run_id)
            changes: dict[str, Any] = {"updated_at": now()}
            if state is not None and state != run["state"]:
                if state not in _RUN_TRANSITIONS.get(run["state"], set()):
                    raise RegistryError(f"run {run_id} is {run['state']}; it cannot become {state}")
                changes["state"] = state
                if state == "running" and run["started_at"] is None:
                    changes["started_at"] = changes["updated_at"]
                if state in ("stopped", "failed", "finished"):
                    changes["finished_at"] = changes["updated_at"]
                    changes["pid"] = None
                elif state in ("queued", "running"):
                    changes["finished_at"] = None
                    changes["failure_reason"] = None
            if pid is not None:
                changes["pid"] = pid
            if failure_reason is not None:
                changes["failure_reason"] = failure_reason
            if config is not None:
                changes["config"] = config
            self.db.table("runs").update(run_id, self._encode("runs", changes))
            if "state" in changes:
                self.audit(
                    f"run.{state}",
                    run_id,
                    {"from": run["state"], "reason": failure_reason}
                    if failure_reason
                    else {"from": run["state"]},
                )
            self._write_run_meta(run_id)
            return self.run(run_id)

    def run(self, run_id: str) -> dict[str, Any]:
        """One run, with ``base_model`` and ``dataset`` names joined in.

        Raises:
            NotFoundError: no run has that id.
        """
        rows = self._query(f"{_RUN_SELECT} WHERE r.id = ?", (run_id,))
        if not rows:
            raise NotFoundError(f"no run with id {run_id!r}; 'appliance run list' shows the runs")
        return self._row("runs", rows[0])

    def runs(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every run (optionally in one state), oldest first."""
        if state is None:
            rows = self._query(f"{_RUN_SELECT} ORDER BY r.created_at, r.id")
        else:
            rows = self._query(f"{_RUN_SELECT} WHERE r.state = ? ORDER BY r.created_at", (state,))
        return [self._row("runs", r) for r in rows]

    def _write_run_meta(self, run_id: str) -> None:
        run = self.run(run_id)
        record = {k: v for k, v in run.items() if k not in ("base_model_id", "dataset_version_id")}
        write_meta(self.ws.home / Path(run["path"]), "run", record)


_RUN_SELECT = """
SELECT r.*, m.name AS base_model, m.sha256 AS base_model_sha256,
       d.name AS dataset, d.version AS dataset_version, d.sha256 AS dataset_sha256
FROM runs r
LEFT JOIN base_models m ON m.id = r.base_model_id
LEFT JOIN dataset_versions d ON d.id = r.dataset_version_id
"""


def new_run_id() -> str:
    """A sortable, unique run id such as ``run-20260101-120000-a1b2c3``."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
