"""Tags of adapter names in the registry (``reg.tags``): ``production`` and the like, each
pointing at one live version of its name."""

from __future__ import annotations

from typing import Any, cast

from appliance.errors import NotFoundError, UsageError
from appliance.registry.adapter_versions import AdapterVersions
from appliance.registry.core import Core
from appliance.registry.refs import Ref, check_tag, now, os_user, parse_ref
from appliance.registry.rows import TagMove, TagRow


class Tags:
    """The ``tags`` table."""

    def __init__(self, core: Core, adapters: AdapterVersions) -> None:
        self._core = core
        self._adapters = adapters

    def set(self, ref: str | Ref, tag: str, *, details: dict[str, Any] | None = None) -> TagMove:
        """Point ``tag`` of the adapter's name at this version (moving it atomically).

        Args:
            details: more for the audit row (e.g. the promotion gate's figures, an override's
                reason).

        Returns:
            The version it now names and the one it pointed at before (or None).
        """
        check_tag(tag)
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.tag == tag:
            raise UsageError(f"{r} already names the version tagged {tag}")
        core = self._core
        with core.transaction():
            target = self._adapters.version(r)
            old = core.query(
                "SELECT a.version FROM tags t JOIN adapter_versions a "
                "ON a.id = t.adapter_version_id WHERE t.name = ? AND t.tag = ?",
                (target["name"], tag),
            )
            previous = old[0]["version"] if old else None
            # One UPSERT: readers see either the old or the new target, never no tag at all.
            core.conn.execute(
                "INSERT INTO tags (name, tag, adapter_version_id, updated_at, updated_by) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name, tag) DO UPDATE SET "
                "adapter_version_id = excluded.adapter_version_id, "
                "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (target["name"], tag, target["id"], now(), os_user()),
            )
            core.audit(
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

    def remove(self, name: str, tag: str) -> None:
        """Remove ``tag`` from adapter ``name``.

        Raises:
            NotFoundError: the tag is not set.
        """
        core = self._core
        with core.transaction():
            cur = core.conn.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (name, tag))
            if cur.rowcount == 0:
                raise NotFoundError(f"adapter {name} has no tag {tag!r}")
            core.audit("adapter.untag", name, {"tag": tag})

    def all(self, name: str | None = None) -> list[TagRow]:
        """Tags (of adapter ``name``, or all), by name then tag."""
        sql = (
            "SELECT t.name, t.tag, a.version, t.updated_at, t.updated_by FROM tags t "
            "JOIN adapter_versions a ON a.id = t.adapter_version_id"
        )
        if name is not None:
            rows = self._core.query(sql + " WHERE t.name = ? ORDER BY t.tag", (name,))
        else:
            rows = self._core.query(sql + " ORDER BY t.name, t.tag")
        return [cast(TagRow, r) for r in rows]
