"""The parent side of a ``generate`` job: check what to load, hand over exactly its keys.

Torch-free: the CLI and the desktop app build requests here, then run them with
:class:`appliance.generation.client.GenerationSession` or ``gui.process.JobProcess``.
"""

from __future__ import annotations

from appliance.generation.plan import LoadPlan, plan
from appliance.jobs import JobRequest
from appliance.registry import Registry
from appliance.vault import Vault


def generate_request(
    vault: Vault, reg: Registry, refs: list[str], model: str | None = None
) -> tuple[JobRequest, LoadPlan]:
    """An interactive ``generate`` job loading ``model`` (or the adapters' base) and ``refs``.

    Bad input (an unknown adapter, adapters of two base models, a deleted base model) is
    refused here, before any process starts.
    """
    loaded = plan(vault.ws, reg, refs, model, check_files=False)
    request = JobRequest.for_vault(
        vault,
        "generate",
        {"adapters": list(refs), "model": model},
        objects=loaded.objects(),
        interactive=True,
    )
    return request, loaded
