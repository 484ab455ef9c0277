"""The one shape of a progress report, shared by every long operation of the core and the GUI.

``progress(done, total, stage)``: ``done`` units of ``total`` (0 when unknown) in the named
stage. Imports, exports, registry checks, token counts and the desktop app's background tasks
all report this way, and so does :meth:`appliance.jobs.child.JobContext.progress`, so a job
kind passes its context's method straight through.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]
"""``progress(done, total, stage)``; ``total`` 0 means unknown."""


def no_progress(done: int, total: int, stage: str) -> None:
    """A progress callback that ignores its reports (for callers that pass none)."""


MODEL_IMPORT_STAGES = {
    "checking": "Checking files",
    "hashing": "Hashing",
    "copying": "Copying",
    "converting": "Converting GGUF to safetensors",
    "saving": "Saving",
    "verifying": "Verifying",
}
"""The stages :func:`appliance.models.importer.import_model` reports, in words for people (the
CLI's progress line and the Models page). Here rather than beside the importer, whose module
the desktop process does not load."""

EXPORT_STAGES = {
    "checking": "Checking the adapter and its base",
    "loading": "Loading the base model",
    "reference": "Running the adapter (reference)",
    "merging": "Merging",
    "writing": "Writing",
    "verifying": "Reloading and verifying",
    "finishing": "Writing MANIFEST and model card",
}
"""The stages :func:`appliance.export.pipeline.export_adapter` reports, in order, in words for
people (the CLI's progress line and the Export page)."""

EVAL_STAGES = {
    "checking": "Checking the adapters, base model and dataset",
    "loading": "Loading the model",
    "scoring": "Scoring",
}
"""The stages of an ``eval`` job (:mod:`appliance.evaluation.job`), in words for people."""


def eval_stage_words(stage: str, message: str = "") -> str:
    """What the CLI and the Registry page show for an ``eval`` job's progress event.

    While scoring, the job's ``message`` names what is being scored (``legal@2 on golden``).
    """
    if stage == "scoring" and message:
        return f"Scoring {message}"
    return EVAL_STAGES.get(stage, stage)
