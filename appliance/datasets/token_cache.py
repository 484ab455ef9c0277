"""The encrypted cache of token statistics, one object per (dataset version, base model).

Measuring a dataset against a model takes a tokenizer, hence a child process (the
``token-stats`` job); reading the result back takes only the vault. So the desktop app and
the memory estimate call :func:`cached_token_stats` (torch-free, milliseconds) and start the
job (:func:`token_stats_request`) only on a miss; the CLI and tests call
:func:`compute_token_stats`, which does both.

Each entry is a vault object in ``datasets/token-stats/``, named by the version's random object
id and the model's sha256 (names the registry shows anyway), holding :class:`TokenStats` as
JSON. Objects are keyed by the *cache key*, derived from the master key by HKDF like the audit
key: the parent hands it to the job over stdin with the data key of the one version it reads,
so the child can write the cache without ever seeing the master key, and can read no other
data. The object id in the header is derived from the name, so a cache file copied over another
fails to open; a damaged or stale entry is simply measured again. Deleting a dataset version
deletes its entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.datasets.store import resolve, version_label
from appliance.datasets.token_stats import TokenStats
from appliance.errors import IntegrityError
from appliance.fsutil import fsync_dir
from appliance.jobs.events import JobEvent
from appliance.jobs.request import JobRequest
from appliance.jobs.runner import run_job
from appliance.registry import Registry
from appliance.registry.rows import BaseModelRow, DatasetVersionRow
from appliance.vault import Vault
from appliance.vault.objects import read_object, write_object
from appliance.workspace import Workspace

KIND = "token-stats"
"""The job kind (see :mod:`appliance.jobs.kinds`)."""
CACHE_KEY_NAME = "token-stats-cache"
"""The name under which the cache key travels in a job's key ring."""
CACHE_INFO = b"appliance token-stats cache v1"
FOLDER = "token-stats"


def cache_key(vault: Vault) -> bytes:
    """The key of the token statistics cache: HKDF-SHA256 of the master key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CACHE_INFO).derive(
        vault.master_key
    )


def cache_dir(ws: Workspace) -> Path:
    return ws.datasets_dir / FOLDER


def cache_path(ws: Workspace, version: DatasetVersionRow, model: BaseModelRow) -> Path:
    """Where the statistics of ``version`` against ``model`` (registry rows) live."""
    return cache_dir(ws) / f"{version['object_id']}.{model['sha256'][:32]}.enc"


def cache_object_id(version: DatasetVersionRow, model: BaseModelRow) -> str:
    """The object id written into the entry's header, derived from its name."""
    name = f"token-stats:{version['object_id']}:{model['sha256']}".encode()
    return hashlib.sha256(name).hexdigest()[:32]


def check_plaintext(version: DatasetVersionRow, plaintext: bytes | bytearray) -> None:
    """Refuse a version whose plaintext does not have the registry's sha256.

    Raises:
        IntegrityError: the same message as :func:`appliance.datasets.store.read_plaintext`.
    """
    if hashlib.sha256(plaintext).hexdigest() != version["sha256"]:
        raise IntegrityError(
            f"{version_label(version)} does not match its registry record (sha256); "
            "restore it from backup"
        )


def write_cache(
    ws: Workspace, version: DatasetVersionRow, model: BaseModelRow, key: bytes, stats: TokenStats
) -> Path:
    """Encrypt ``stats`` into the cache (atomically; an entry already there is replaced)."""
    folder = cache_dir(ws)
    if not folder.is_dir():
        folder.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(folder.parent)
    path = cache_path(ws, version, model)
    write_object(path, key, cache_object_id(version, model), [stats.to_bytes()])
    return path


def read_cache(
    ws: Workspace, version: DatasetVersionRow, model: BaseModelRow, key: bytes
) -> TokenStats | None:
    """The cached statistics, or None when there are none, or they are damaged or stale."""
    path = cache_path(ws, version, model)
    if not path.is_file():
        return None
    what = f"token statistics of {version_label(version)} against model {model['name']}"
    try:
        data = read_object(path, key, cache_object_id(version, model), what)
        stats = TokenStats.from_bytes(data, what)
    except IntegrityError:
        return None
    if stats.dataset_sha256 != version["sha256"] or stats.model_sha256 != model["sha256"]:
        return None
    return stats


def cached_token_stats(
    vault: Vault, reg: Registry, dataset_ref: str, model: str
) -> TokenStats | None:
    """The cached statistics of a dataset version against a base model, None on a miss.

    Torch-free and fast (one small decryption): safe to call from the GUI thread.

    Args:
        dataset_ref: ``NAME`` (latest version) or ``NAME@VERSION``.
        model: a base model's registry name.

    Raises:
        NotFoundError: no such dataset version or model (the registry's message).
        UsageError: a malformed reference.
    """
    version = resolve(reg, dataset_ref)
    model_row = reg.models.get(model)
    return read_cache(vault.ws, version, model_row, cache_key(vault))


def token_stats_request(vault: Vault, reg: Registry, dataset_ref: str, model: str) -> JobRequest:
    """The ``token-stats`` job that measures ``dataset_ref`` against ``model`` and caches it.

    The job gets the data key of that one version and the cache key, nothing else. When it
    succeeds, :func:`cached_token_stats` returns the statistics.
    """
    version = resolve(reg, dataset_ref)
    model_row = reg.models.get(model)
    request = JobRequest.for_vault(
        vault,
        KIND,
        {"dataset": f"{version['name']}@{version['version']}", "model": model_row["name"]},
        objects=[(vault.path(version["path"]), version["object_id"], version_label(version))],
    )
    keys = {**request.keys, CACHE_KEY_NAME: cache_key(vault)}
    return JobRequest(
        kind=request.kind, home=request.home, params=request.params, keys=keys, audit_key=None
    )


def compute_token_stats(
    vault: Vault,
    reg: Registry,
    dataset_ref: str,
    model: str,
    *,
    on_event: Callable[[JobEvent], None] | None = None,
    timeout: float | None = None,
) -> TokenStats:
    """The statistics from the cache, or measured by a ``token-stats`` job (blocking).

    Raises:
        JobError: the job failed (its one-line message).
        IntegrityError: the job succeeded but left no readable cache entry.
    """
    cached = cached_token_stats(vault, reg, dataset_ref, model)
    if cached is not None:
        return cached
    run_job(token_stats_request(vault, reg, dataset_ref, model), on_event, timeout=timeout).data()
    stats = cached_token_stats(vault, reg, dataset_ref, model)
    if stats is None:
        raise IntegrityError(
            f"the token statistics of {dataset_ref} against {model} were measured but cannot be "
            "read back from the cache; try again"
        )
    return stats


def forget_version(ws: Workspace, version: DatasetVersionRow) -> int:
    """Delete every cached entry of a dataset version; returns how many there were."""
    folder = cache_dir(ws)
    if not folder.is_dir() or not version.get("object_id"):
        return 0
    removed = 0
    for path in folder.glob(f"{version['object_id']}.*.enc"):
        path.unlink(missing_ok=True)
        removed += 1
    if removed:
        fsync_dir(folder)
    return removed
