"""Exports of adapter versions in the registry (``reg.exports``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from appliance.folders import artifact_sha256
from appliance.registry.adapter_versions import AdapterVersions
from appliance.registry.core import Core
from appliance.registry.refs import Ref
from appliance.registry.rows import ExportRow


class Exports:
    """The ``exports`` table."""

    def __init__(self, core: Core, adapters: AdapterVersions) -> None:
        self._core = core
        self._adapters = adapters

    def add(
        self,
        ref: str | Ref,
        *,
        format: str,
        path: Path | str,
        sha256: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Record an export of an adapter version (a file or folder) and audit it; returns its id.

        ``path`` is stored absolute: an export lies outside the workspace
        (:func:`appliance.destinations.check_apart_from_workspace`).
        """
        stored = str(Path(path).absolute())
        core = self._core
        with core.transaction():
            adapter = self._adapters.version(ref)
            digest = sha256 or artifact_sha256(Path(stored))
            export_id = core.insert(
                "exports",
                {
                    "adapter_version_id": adapter["id"],
                    "format": format,
                    "path": stored,
                    "sha256": digest,
                    "details": details or {},
                    **core.stamp(),
                },
            )
            core.audit(
                "export.create",
                adapter["ref"],
                {"format": format, "path": stored, "sha256": digest},
            )
        return export_id

    def all(self, ref: str | Ref | None = None) -> list[ExportRow]:
        """Exports (of one adapter version, or all), oldest first."""
        sql = (
            "SELECT e.*, a.name || '@' || a.version AS adapter FROM exports e "
            "JOIN adapter_versions a ON a.id = e.adapter_version_id"
        )
        if ref is None:
            rows = self._core.query(sql + " ORDER BY e.id")
        else:
            adapter = self._adapters.version(ref, include_deleted=True)
            rows = self._core.query(
                sql + " WHERE e.adapter_version_id = ? ORDER BY e.id", (adapter["id"],)
            )
        return [cast(ExportRow, self._core.row("exports", r)) for r in rows]
