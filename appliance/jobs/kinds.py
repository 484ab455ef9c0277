"""The kinds of job, each as ``"module:function"`` of its handler (imported only in the child).

A handler is ``def handler(ctx: JobContext) -> dict[str, Any]``: it does the work, reports with
``ctx.progress`` / ``ctx.output``, raises an :class:`~appliance.errors.ApplianceError` with the
CLI's message on failure, and returns the result's data (JSON-ready). The data a kind returns is
documented on its handler.
"""

from __future__ import annotations

KINDS: dict[str, str] = {
    "model-import": "appliance.models.job:import_job",
    # Merge / convert an adapter version for serving, verified (the same path as the CLI).
    "export": "appliance.export.job:export_job",
    # The whole workspace's integrity: registry, artifacts' sha256, audit chain.
    "verify": "appliance.verify.job:verify_job",
    # Token statistics of a dataset version against a base model, cached encrypted
    # (appliance.datasets.token_cache starts it and reads the cache back).
    "token-stats": "appliance.training.dataset_tokens:token_stats_job",
    # Chat with a base model and adapter versions side by side (interactive).
    "generate": "appliance.generation.job:generate",
    # Score adapter versions (and their base) on a dataset version; stores the results.
    "eval": "appliance.evaluation.job:evaluate",
    # Kinds used by the tests of the job mechanism itself.
    "selftest-echo": "appliance.jobs.selftest:echo",
}
