"""The parent side of a ``generate`` job: check what to load, hand over exactly its keys.

Torch-free: the CLI and the desktop app build requests here, then run them with
:class:`appliance.generation.client.GenerationSession` or ``gui.process.JobProcess``.
"""

from __future__ import annotations

from appliance.generation.plan import LoadPlan, plan
from appliance.generation.protocol import Load
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


def load_command(
    vault: Vault, reg: Registry, refs: list[str], model: str, command_id: str = ""
) -> tuple[Load, LoadPlan]:
    """A ``load`` command for a running session of base model ``model``: adapters ``refs``
    with the data keys of exactly their objects.

    Bad input (an unknown adapter, an adapter of another base model, a deleted base model) is
    refused here, before anything is sent.
    """
    loaded = plan(vault.ws, reg, refs, model, check_files=False)
    keys = {oid: vault.data_key(path, oid, what).hex() for path, oid, what in loaded.objects()}
    return Load(id=command_id, adapters=list(refs), keys=keys), loaded
