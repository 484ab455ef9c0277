"""Base models in the registry (``reg.models``)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, cast

from appliance.errors import NotFoundError, RegistryError, UsageError
from appliance.registry.core import Core
from appliance.registry.refs import check_name
from appliance.registry.rows import BaseModelRow

BASE_MODEL_FIELDS = (
    "architecture",
    "model_type",
    "parameters",
    "dtype",
    "context_length",
    "vocab_size",
    "has_chat_template",
    "total_bytes",
    "format",
    "linked",
    "source",
    "source_sha256",
    "path",
    "sha256",
    "manifest",
)
"""The fields a base model is recorded with besides its name and stamps, in the order
``appliance model show`` lists them."""


def check_fields(given: dict[str, Any], allowed: Collection[str], what: str) -> None:
    """Refuse fields a table does not have (a misspelt keyword would otherwise be dropped)."""
    unknown = sorted(set(given).difference(allowed))
    if unknown:
        raise RegistryError(f"unknown {what} field(s): {', '.join(unknown)}")


class BaseModels:
    """The ``base_models`` table."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def add(self, name: str, *, audit: bool = True, **fields: Any) -> int:
        """Insert a base model row (and its audit row) in one transaction; returns its id.

        Raises:
            UsageError: a model of that name exists already.
        """
        check_name(name, "model name")
        check_fields(fields, BASE_MODEL_FIELDS, "base model")
        core = self._core
        with core.transaction():
            if core.query("SELECT 1 FROM base_models WHERE name = ?", (name,)):
                raise UsageError(
                    f"a base model named {name!r} exists already; choose another --name"
                )
            model_id = core.insert("base_models", {"name": name, **fields, **core.stamp()})
            if audit:
                core.audit(
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

    def get(self, name: str) -> BaseModelRow:
        """The base model called ``name``.

        Raises:
            NotFoundError: there is none; the message lists the models that exist.
        """
        rows = self._core.query(
            "SELECT * FROM base_models WHERE name = ? AND deleted_at IS NULL", (name,)
        )
        if not rows:
            names = [r["name"] for r in self.all()]
            have = (
                ", ".join(names) if names else "none yet; import one with 'appliance model import'"
            )
            raise NotFoundError(f"no base model named {name!r} (base models: {have})")
        return self._typed(rows[0])

    def all(self) -> list[BaseModelRow]:
        """Every base model, oldest first."""
        rows = self._core.query("SELECT * FROM base_models WHERE deleted_at IS NULL ORDER BY id")
        return [self._typed(r) for r in rows]

    def by_id(self, model_id: int) -> BaseModelRow | None:
        """The base model with this id (deleted or not), or None."""
        rows = self._core.query("SELECT * FROM base_models WHERE id = ?", (model_id,))
        return self._typed(rows[0]) if rows else None

    def _typed(self, row: dict[str, Any]) -> BaseModelRow:
        return cast(BaseModelRow, self._core.row("base_models", row))
