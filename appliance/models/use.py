"""Using an imported base model: find its folder and prove it is still what was imported."""

from __future__ import annotations

from pathlib import Path

from appliance.errors import IntegrityError, ModelImportError
from appliance.folders import tree_files
from appliance.fsutil import sha256_file
from appliance.models import describe as desc
from appliance.models.safety import scan_folder
from appliance.progress import Progress
from appliance.registry import Registry
from appliance.registry.rows import BaseModelRow
from appliance.workspace import Workspace


def model_folder(ws: Workspace, model: BaseModelRow) -> Path:
    """The folder transformers loads the model from (the copy, or the linked source)."""
    path = Path(model["path"])
    return path if path.is_absolute() else ws.home / path


def verify_model_files(
    ws: Workspace, model: BaseModelRow, *, full: bool = True, progress: Progress | None = None
) -> list[str]:
    """Compare a model's files with its manifest; returns the problems found (empty: all good).

    Args:
        ws: the workspace.
        model: the registry row (``reg.models.get(name)``).
        full: hash every file; when False only presence and safetensors headers are checked.
        progress: called with ``(done_bytes, total_bytes, "verifying")``.
    """
    folder = model_folder(ws, model)
    manifest: dict[str, str] = model["manifest"]
    if not folder.is_dir():
        return [f"model {model['name']}: folder {folder} is missing"]
    problems: list[str] = []
    try:
        scan_folder(folder)
        desc.check_weights(folder)
    except ModelImportError as exc:
        problems.append(f"model {model['name']}: {exc}")
    present = set(tree_files(folder, skip_meta=False))
    problems.extend(
        f"model {model['name']}: {folder / rel} was added after the import"
        for rel in sorted(present - set(manifest))
        if not any(part.startswith(".") for part in Path(rel).parts)
    )
    total = int(model.get("total_bytes") or 0)
    done = 0
    for rel, expected in sorted(manifest.items()):
        path = folder / rel
        if not path.is_file():
            problems.append(f"model {model['name']}: {path} is missing")
            continue
        if not full:
            continue

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total, "verifying")

        if sha256_file(path, advance) != expected:
            problems.append(f"model {model['name']}: {path} changed since the import (sha256)")
    return problems


def resolve_model_for_use(
    ws: Workspace, reg: Registry, name: str, *, progress: Progress | None = None
) -> Path:
    """The folder to load base model ``name`` from, after checking it is safe and unchanged.

    A linked model (``--link``) has every file re-hashed against its manifest each time, since
    its folder lives outside the workspace; a copied one is checked for presence and safe
    headers (``appliance verify`` re-hashes copies).

    Raises:
        NotFoundError: no such model.
        IntegrityError: a file is missing, changed, or unsafe; the message names it.
    """
    model = reg.models.get(name)
    problems = verify_model_files(ws, model, full=bool(model["linked"]), progress=progress)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(
            f"{problems[0]}{more}; re-import the model or restore its files "
            "('appliance verify' lists every problem)"
        )
    return model_folder(ws, model)
