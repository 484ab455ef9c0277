"""What a generation or evaluation loads: a base model and adapter versions of it.

Resolved twice with the same function: by the parent, to refuse bad input at once and to hand
the child exactly the keys of the adapter objects it will read; and by the child, which trusts
nothing it was told and checks the files itself before loading. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance import adapters
from appliance.adapters import StoredAdapter
from appliance.errors import IntegrityError, NotFoundError, UsageError
from appliance.models.use import model_folder, resolve_model_for_use
from appliance.registry import Registry
from appliance.registry.rows import BaseModelRow
from appliance.workspace import Workspace

MAX_ADAPTERS = 8
"""More adapters than this in one process is a mistake, not a comparison."""


@dataclass(frozen=True)
class LoadPlan:
    """A base model and the adapter versions to load beside it."""

    model: BaseModelRow
    """The base model's registry row."""
    folder: Path
    """Where transformers loads it from."""
    adapters: dict[str, StoredAdapter]
    """By the name the caller used (``legal``, ``legal@production``...), in the caller's order."""

    def objects(self) -> list[tuple[Path, str, str]]:
        """``(path, object_id, what)`` of each adapter object: the keys a child is handed."""
        unique = {s.object_id: s for s in self.adapters.values()}
        return [(s.path, s.object_id, s.what) for s in unique.values()]

    def refs(self) -> dict[str, str]:
        """Each name the caller used -> the version it resolved to (``NAME@N``)."""
        return {name: s.record["ref"] for name, s in self.adapters.items()}


def plan(
    ws: Workspace,
    reg: Registry,
    refs: list[str],
    model: str | None = None,
    *,
    check_files: bool = True,
) -> LoadPlan:
    """Resolve the adapters ``refs`` and their common base model (or ``model`` alone).

    Args:
        check_files: verify the base model's files as training does (a linked model is
            re-hashed); False only checks that its folder is there (for a parent that is
            about to start a child which checks them again).

    Raises:
        UsageError: nothing to load, too many adapters, adapters of different base models, or
            ``model`` is not their base model.
        NotFoundError: an adapter version does not exist.
        IntegrityError: an adapter's files changed, or its base model is gone or changed.
    """
    if not refs and not model:
        raise UsageError("name an adapter version (NAME, NAME@N or NAME@TAG) or a base model")
    if len(set(refs)) > MAX_ADAPTERS:
        raise UsageError(f"load at most {MAX_ADAPTERS} adapters at a time")
    located: dict[str, StoredAdapter] = {}
    bases: dict[str, str] = {}
    for ref in refs:
        stored = adapters.locate(ws, reg, ref)
        located[ref] = stored
        bases[stored.record["ref"]] = _base_of(reg, stored)
    names = sorted(set(bases.values()))
    if len(names) > 1:
        listing = ", ".join(f"{ref} on {name}" for ref, name in bases.items())
        raise UsageError(
            f"these adapters belong to different base models ({listing}); compare adapters of "
            "one base model at a time"
        )
    if model and names and names[0] != model:
        raise UsageError(
            f"{next(iter(bases))} was trained on base model {names[0]!r}, not {model!r}; "
            "an adapter runs only on its own base model"
        )
    name = names[0] if names else str(model)
    row = reg.models.get(name)
    if check_files:
        folder = resolve_model_for_use(ws, reg, name)
    else:
        folder = model_folder(ws, row)
        if not folder.is_dir():
            raise IntegrityError(
                f"model {name}: folder {folder} is missing; re-import the model or restore "
                "its files ('appliance verify' lists every problem)"
            )
    return LoadPlan(model=row, folder=folder, adapters=located)


def _base_of(reg: Registry, stored: StoredAdapter) -> str:
    """The name of the base model an adapter was trained on, still present and unchanged."""
    ref = stored.record["ref"]
    base = reg.adapters.lineage(ref)["base_model"]
    if base is None:
        raise IntegrityError(
            f"adapter {ref} has no base model in its lineage (no training run recorded), so "
            "it cannot be loaded"
        )
    try:
        row = reg.models.get(base["name"])
    except NotFoundError:
        raise IntegrityError(
            f"adapter {ref} was trained on base model {base['name']!r}, which was deleted from "
            "the workspace; an adapter runs only on its own base model: import that model again"
        ) from None
    if row["sha256"] != base["sha256"]:
        raise IntegrityError(
            f"adapter {ref} was trained on base model {base['name']!r} with sha256 "
            f"{base['sha256'][:12]}…, but the model of that name now has {row['sha256'][:12]}…; "
            "an adapter runs only on the weights it was trained on"
        )
    return str(base["name"])
