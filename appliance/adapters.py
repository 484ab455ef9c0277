"""Adapters at rest: a PEFT LoRA adapter stored as one vault object, never as plaintext.

Layout of an adapter version::

    adapters/NAME/VERSION/
        adapter.enc   vault object: safetensors bytes of the LoRA tensors (PEFT state-dict keys),
                      with the PEFT ``adapter_config.json`` content in the safetensors metadata
        meta.json     the registry record with its lineage (:mod:`appliance.adapter_folders`)

Serialisation happens in memory (``safetensors.torch.save``/``load`` on bytes), so the plaintext
tensors never touch the disk; the vault authenticates the whole object before it is parsed.
The training child packs its adapter with :func:`pack` into its run folder, sealed with the run's
key (it never loads the registry); the parent, settling the run, registers the packed bytes with
:func:`store`. Export reads an adapter with :func:`load`; the chat and evaluation children find
theirs with :func:`locate` and decrypt it with the key they are handed (:func:`unpack_stored`).
Checkpoints are not adapters: they stay in the run folder (:mod:`appliance.training.checkpoint`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import adapter_folders
from appliance.errors import IntegrityError
from appliance.folders import artifact_sha256
from appliance.fsutil import fsync_dir, temp_name
from appliance.vault import Vault, new_object_id
from appliance.vault.objects import object_id_of
from appliance.workspace import Workspace

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

    # Only callers that already hold a registry (store, load) need it: the training child packs
    # its adapter with this module and never loads the registry.
    from appliance.registry import Registry
    from appliance.registry.rows import AdapterVersionRow

ADAPTER_FILE = "adapter.enc"
CONFIG_METADATA_KEY = "adapter_config"
FORMAT_METADATA_KEY = "appliance_adapter_format"
FORMAT = "1"


@dataclass
class AdapterWeights:
    """A LoRA adapter in memory: PEFT's config and its tensors."""

    config: dict[str, Any]
    """The content of PEFT's ``adapter_config.json`` (sets as lists, enums as strings)."""
    tensors: dict[str, torch.Tensor]
    """As ``peft.get_peft_model_state_dict`` returns them (no adapter name in the keys)."""


def config_to_json_dict(peft_config: Any) -> dict[str, Any]:
    """A PEFT config as ``save_pretrained`` would write it: JSON types only."""
    raw = peft_config.to_dict()
    text = json.dumps(
        raw, default=lambda v: sorted(v) if isinstance(v, set | frozenset) else str(v)
    )
    data: dict[str, Any] = json.loads(text)
    return data


def from_peft_model(model: PeftModel, adapter_name: str = "default") -> AdapterWeights:
    """Take the adapter's weights and config out of a PEFT model (copied to the CPU)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return AdapterWeights(config_to_json_dict(model.peft_config[adapter_name]), tensors)


def _peft_config(weights: AdapterWeights) -> Any:
    from peft import LoraConfig

    return LoraConfig.from_peft_type(**{**weights.config, "inference_mode": True})


def _set_weights(model: PeftModel, weights: AdapterWeights, adapter_name: str) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, weights.tensors, adapter_name=adapter_name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    marker = f".{adapter_name}."
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and marker in k]
    if unexpected or missing:
        example = (unexpected or missing)[0]
        raise IntegrityError(
            f"the adapter does not fit this base model: {len(unexpected) + len(missing)} of its "
            f"tensors have no place in it or are missing (e.g. {example}); use the base model "
            "it was trained on"
        )


def apply_to(
    base: PreTrainedModel, weights: AdapterWeights, adapter_name: str = "default"
) -> PeftModel:
    """Wrap ``base`` in a PEFT model carrying ``weights`` (for inference or merging)."""
    from peft import PeftModel

    model = PeftModel(base, _peft_config(weights), adapter_name=adapter_name)
    _set_weights(model, weights, adapter_name)
    return model


def add_to(model: PeftModel, weights: AdapterWeights, adapter_name: str) -> None:
    """Load one more adapter into a PEFT model, beside those it has (peft's multi-adapter
    support): ``model.set_adapter(adapter_name)`` then switches to it without reloading the
    base."""
    model.add_adapter(adapter_name, _peft_config(weights))
    _set_weights(model, weights, adapter_name)


def pack(weights: AdapterWeights) -> bytes:
    """Serialise to safetensors bytes in memory, the config in the metadata."""
    from safetensors.torch import save

    metadata = {
        CONFIG_METADATA_KEY: json.dumps(weights.config, sort_keys=True),
        FORMAT_METADATA_KEY: FORMAT,
    }
    return bytes(save(weights.tensors, metadata=metadata))


def check_packed(blob: bytes | bytearray, what: str) -> dict[str, Any]:
    """Check that ``blob`` is what :func:`pack` writes, reading only its header (no torch).

    Returns:
        The PEFT config carried in the metadata.

    Raises:
        IntegrityError: the bytes are not an adapter of a known format.
    """
    try:
        header_len = int.from_bytes(bytes(blob[:8]), "little")
        if not 2 <= header_len <= len(blob) - 8:
            raise ValueError("bad header length")
        header = json.loads(bytes(blob[8 : 8 + header_len]))
        metadata = header.get("__metadata__") or {}
        config = json.loads(metadata[CONFIG_METADATA_KEY])
        fmt = metadata.get(FORMAT_METADATA_KEY)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(
            f"{what} is not a readable adapter ({exc}); restore it from backup"
        ) from None
    if fmt != FORMAT or not isinstance(config, dict):
        raise IntegrityError(f"{what} has an unknown adapter format {fmt!r}; upgrade the appliance")
    return config


def unpack(blob: bytes | bytearray, what: str) -> AdapterWeights:
    """Parse what :func:`pack` produced.

    Raises:
        IntegrityError: the bytes are not an adapter of a known format.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    config = check_packed(blob, what)
    try:
        tensors = load(bytes(blob))
    except (SafetensorError, ValueError) as exc:
        raise IntegrityError(
            f"{what} is not a readable adapter ({exc}); restore it from backup"
        ) from None
    return AdapterWeights(config, tensors)


def store(
    vault: Vault,
    reg: Registry,
    name: str,
    weights: AdapterWeights | bytes,
    *,
    run_id: str | None,
    metrics: dict[str, Any] | None = None,
    lib_versions: dict[str, Any] | None = None,
) -> int:
    """Encrypt ``weights`` and register them as the next version of adapter ``name``.

    ``weights`` may come already packed (bytes from :func:`pack`, e.g. the training child's
    sealed adapter): it is then checked by its header alone, without importing torch.

    The folder is built under the workspace's tmp folder and renamed into place in the same
    registry transaction that records it (:func:`appliance.adapter_folders.place`), so a
    failure leaves neither file nor row.

    Returns:
        The new version number.
    """
    staging = vault.ws.tmp_dir / temp_name(f"adapter-{name}")
    staging.mkdir(mode=0o700)
    try:
        if isinstance(weights, bytes):
            check_packed(weights, f"adapter {name}")
            blob = weights
        else:
            blob = pack(weights)
        vault.write(staging / ADAPTER_FILE, new_object_id(), [blob])
        return adapter_folders.place(
            reg, name, staging, run_id=run_id, metrics=metrics, lib_versions=lib_versions
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class StoredAdapter:
    """Where an adapter version's vault object lies, after its files were checked."""

    record: AdapterVersionRow
    """The registry row (``reg.adapters.version``)."""
    path: Path
    """The encrypted ``adapter.enc``."""
    object_id: str
    """The vault object's id (the key a child process is handed is looked up by it)."""

    @property
    def what(self) -> str:
        """How messages name it: ``adapter NAME@N``."""
        return f"adapter {self.record['name']}@{self.record['version']}"


def locate(ws: Workspace, reg: Registry, ref: str) -> StoredAdapter:
    """Find adapter version ``ref`` (NAME[@N|@TAG]) and check its folder against the registry.

    Raises:
        NotFoundError: no such adapter version.
        IntegrityError: the files were modified or damaged.
    """
    record = reg.adapters.version(ref)
    label = f"adapter {record['name']}@{record['version']}"
    folder = ws.home / record["path"]
    actual = artifact_sha256(folder) if folder.exists() else None
    if actual != record["sha256"]:
        raise IntegrityError(
            f"{label} is damaged or was modified (its files no longer match the registry); "
            "restore it from backup"
        )
    path = folder / ADAPTER_FILE
    return StoredAdapter(record, path, object_id_of(path, label))


def unpack_stored(stored: StoredAdapter, blob: bytes | bytearray) -> AdapterWeights:
    """The weights of a located adapter from its decrypted object (e.g. in a job child)."""
    return unpack(blob, stored.what)


def load(vault: Vault, reg: Registry, ref: str) -> tuple[AdapterVersionRow, AdapterWeights]:
    """The registry record and the decrypted weights of adapter version ``ref`` (NAME[@N]).

    The folder's hash is checked against the registry and the vault authenticates every chunk
    before anything is parsed.

    Raises:
        NotFoundError: no such adapter version.
        IntegrityError: the files were modified or damaged.
    """
    stored = locate(vault.ws, reg, ref)
    blob = vault.read(stored.path, stored.object_id, what=stored.what)
    return stored.record, unpack(blob, stored.what)


def delete_version(ws: Workspace, reg: Registry, ref: str) -> AdapterVersionRow:
    """Delete adapter version ``ref``: its registry row is marked deleted (lineage, exports and
    audit rows stay) and its encrypted folder is removed. Call with the writer lock held.

    The row is marked first: a crash in between leaves an orphan folder (harmless, no key is
    lost), never a live row without its weights.

    Returns:
        The version's row as it was.

    Raises:
        NotFoundError: no such live version.
        RegistryError: it carries a tag.
    """
    record = reg.adapters.delete_version(ref)
    folder = ws.home / record["path"]
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.is_dir():
        fsync_dir(folder.parent)
    return record
