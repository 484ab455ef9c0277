"""The ``model-import`` job: :func:`import_model` in a child process, for the desktop app.

A GGUF import loads transformers and torch; the desktop process never does, so it starts this
job instead (``JobRequest.for_vault(vault, "model-import", params, writes_registry=True)``: the
job adds the registry row, so it needs the audit key and no data key).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import UsageError
from appliance.models.importer import import_model

if TYPE_CHECKING:
    from appliance.jobs.child import JobContext


def import_job(ctx: JobContext) -> dict[str, Any]:
    """Import a model folder or GGUF file, reporting each stage's progress.

    Params:
        source (str): the model folder or ``.gguf`` file.
        name (str): the model's name in the workspace.
        link (bool, default false): reference a folder in place instead of copying it.

    Returns:
        The new base model's registry row (as ``appliance model show`` prints it).

    Raises:
        UsageError: a parameter missing or of the wrong type.
    """
    params = ctx.params
    source = params.get("source")
    name = params.get("name")
    link = params.get("link", False)
    if not isinstance(source, str) or not source:
        raise UsageError("model-import needs 'source': the model folder or .gguf file")
    if not isinstance(name, str) or not name:
        raise UsageError("model-import needs 'name': the model's name in the workspace")
    if not isinstance(link, bool):
        raise UsageError("model-import's 'link' must be true or false")
    with ctx.registry() as reg:
        row = import_model(ctx.ws, reg, Path(source), name, link=link, progress=ctx.progress)
    return dict(row)
