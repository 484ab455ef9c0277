"""Resumable checkpoints: encrypted, atomic, verified by a manifest, the last K kept.

A checkpoint is a folder ``checkpoints/step-00000010/`` with two files:

* ``state.enc``: a vault object sealed by the run key, holding safetensors bytes made in memory:
  the LoRA tensors (``lora/...``), AdamW's per-parameter state (``optim/<i>/...``), the torch and
  CUDA RNG states (``rng/...``), and in the safetensors metadata a JSON ``trainer_state``: step,
  epoch, tokens seen, recent losses, the optimizer's parameter groups, the scheduler's state,
  Python's and numpy's RNG states. No pickle anywhere.
* ``manifest.json``: step, object id, size and sha256 of ``state.enc``; numbers only.

The folder is assembled under a temporary name and renamed into place after both files are
fsynced, so a kill at any moment leaves either the whole checkpoint or a ``.tmp-*`` folder that
the next start removes. Loading walks from the newest checkpoint back and skips, with a warning,
any whose manifest, hash, decryption or contents do not verify.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from appliance.errors import ApplianceError
from appliance.fsutil import atomic_write_bytes, fsync_dir, sha256_file
from appliance.vault.objects import new_object_id, read_object, write_object

FORMAT = 1
STATE_FILE = "state.enc"
MANIFEST_FILE = "manifest.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"

log = logging.getLogger("appliance.training")


@dataclass
class TrainerState:
    """Where the run is: everything besides tensors that a resume needs."""

    step: int = 0
    """Optimizer steps done."""
    tokens_seen: int = 0
    recent_losses: list[float] = field(default_factory=list)
    """Training losses of the last steps, for the final train loss."""
    last_eval_loss: float | None = None
    wall_s: float = 0.0
    """Training seconds of earlier launches."""
    global_micro_batch: int = 0
    """Examples in one micro-batch of the whole run (micro_batch_size x the first launch's
    processes): the unit the data position counts in, kept when a resumed launch runs on
    another number of processes. 0: a checkpoint from before, where it was micro_batch_size."""
    world_size: int = 1
    """Processes of the launch that saved the checkpoint (``rank_rng`` has one state each)."""
    data_position: int = 0
    """Micro-batches consumed: where the batch plan continues (0 in checkpoints saved before
    it was recorded, which means step x gradient accumulation)."""
    batching: str = ""
    """The batching mode the run chose at its start (padded, grouped, packed); a resumed run
    keeps it so it sees the same batches ("" in older checkpoints: decided again)."""


@dataclass
class Snapshot:
    """A checkpoint's content in memory."""

    state: TrainerState
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    """``optimizer.state_dict()``."""
    scheduler: dict[str, Any]
    """``scheduler.state_dict()`` (JSON values only)."""
    rng: dict[str, Any]
    """From :func:`capture_rng`."""
    rank_rng: list[torch.Tensor] = field(default_factory=list)
    """The torch CPU generator state of every process of a run of several, by global rank
    (``rng`` is rank 0's whole state); a launch on as many processes restores each its own."""


def capture_rng() -> dict[str, Any]:
    """The state of every random generator training touches."""
    import random

    import numpy as np

    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# --- serialisation -----------------------------------------------------------------------------


def pack(snapshot: Snapshot) -> bytes:
    """safetensors bytes of a snapshot, built in memory."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {
        f"lora/{k}": v.detach().to("cpu").contiguous() for k, v in snapshot.lora.items()
    }
    for index, values in snapshot.optimizer["state"].items():
        for name, value in values.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim/{index}/{name}"] = tensor.detach().to("cpu").contiguous()
    rng = snapshot.rng
    tensors["rng/torch"] = rng["torch"]
    for index, state in enumerate(snapshot.rank_rng):
        tensors[f"rng/rank/{index}"] = state.to("cpu").contiguous()
    for index, state in enumerate(rng.get("cuda") or []):
        tensors[f"rng/cuda/{index}"] = state.to("cpu")
    version, internal, gauss = rng["python"]
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    trainer_state = {
        "format": FORMAT,
        "state": snapshot.state.__dict__,
        "optimizer_groups": snapshot.optimizer["param_groups"],
        "scheduler": {k: v for k, v in snapshot.scheduler.items() if k != "lr_lambdas"},
        "python_rng": [version, list(internal), gauss],
        "numpy_rng": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    metadata = {"trainer_state": json.dumps(trainer_state)}
    return bytes(save(tensors, metadata=metadata))


def unpack(blob: bytes | bytearray) -> Snapshot:
    """Parse :func:`pack` output.

    Raises:
        ValueError / KeyError: the bytes are not a checkpoint of this format.
    """
    import numpy as np
    from safetensors.torch import load

    data = bytes(blob)
    tensors = load(data)
    header_len = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_len])["__metadata__"]
    trainer = json.loads(metadata["trainer_state"])
    if trainer.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {trainer.get('format')!r} is not {FORMAT}")
    lora = {k.removeprefix("lora/"): v for k, v in tensors.items() if k.startswith("lora/")}
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optim_state.setdefault(int(index), {})[name] = value
    groups = trainer["optimizer_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    cuda = [tensors[f"rng/cuda/{i}"] for i in range(len(tensors)) if f"rng/cuda/{i}" in tensors]
    version, internal, gauss = trainer["python_rng"]
    kind, keys, pos, has_gauss, cached = trainer["numpy_rng"]
    rng = {
        "torch": tensors["rng/torch"],
        "cuda": cuda,
        "python": (version, tuple(internal), gauss),
        "numpy": (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached),
    }
    rank_rng: list[torch.Tensor] = []
    while f"rng/rank/{len(rank_rng)}" in tensors:
        rank_rng.append(tensors[f"rng/rank/{len(rank_rng)}"])
    known = {f.name for f in dataclasses.fields(TrainerState)}
    return Snapshot(
        state=TrainerState(**{k: v for k, v in trainer["state"].items() if k in known}),
        lora=lora,
        optimizer={"state": optim_state, "param_groups": groups},
        scheduler=trainer["scheduler"],
        rng=rng,
        rank_rng=rank_rng,
    )


# --- the folder --------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save(root: Path, run_key: bytes, snapshot: Snapshot, keep_last: int) -> tuple[str, int]:
    """Write a checkpoint of ``snapshot`` under ``root`` atomically, then keep the last K.

    Returns:
        The checkpoint's folder name and the bytes written.
    """
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = checkpoint_name(snapshot.state.step)
    staging = root / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    object_id = new_object_id()
    info = write_object(staging / STATE_FILE, run_key, object_id, [pack(snapshot)])
    manifest = {
        "format": FORMAT,
        "step": snapshot.state.step,
        "object_id": object_id,
        "file": STATE_FILE,
        "file_bytes": info.file_bytes,
        "file_sha256": info.file_sha256,
        "created": time.time(),
    }
    atomic_write_bytes(staging / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    fsync_dir(staging)
    _commit(staging, root / name)
    prune(root, keep_last)
    return name, info.file_bytes


def _commit(staging: Path, target: Path) -> None:
    """Rename the finished folder into place (replacing a checkpoint of the same step)."""
    if target.exists():
        # A resumed run saving the step it resumed from: same content, replace it whole.
        old = target.with_name(f"{TMP_PREFIX}old-{target.name}-{secrets.token_hex(4)}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    fsync_dir(target.parent)


def checkpoints(root: Path) -> list[Path]:
    """Committed checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: p.name)


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints."""
    for old in checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(root)


def clean_partial(root: Path) -> int:
    """Remove folders of saves that a kill interrupted; returns how many."""
    if not root.is_dir():
        return 0
    partial = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return len(partial)


class CheckpointError(ApplianceError):
    """A checkpoint does not verify."""


def verify_and_read(folder: Path, run_key: bytes) -> Snapshot:
    """Read one checkpoint after checking its manifest, hash and authentication.

    Raises:
        CheckpointError: saying what does not verify.
    """
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        state_file = folder / str(manifest["file"])
        expected_sha, object_id = str(manifest["file_sha256"]), str(manifest["object_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"its manifest is missing or unreadable ({exc})") from None
    try:
        actual = sha256_file(state_file)
    except OSError as exc:
        raise CheckpointError(f"its state file cannot be read ({exc})") from None
    if actual != expected_sha:
        raise CheckpointError("its state file does not match the manifest's sha256")
    try:
        blob = read_object(state_file, run_key, object_id, what=f"checkpoint {folder.name}")
        snapshot = unpack(blob)
    except ApplianceError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # safetensors or JSON refusing the content
        raise CheckpointError(f"its content is not a checkpoint ({exc})") from None
    if snapshot.state.step != manifest.get("step"):
        raise CheckpointError("its step does not match the manifest")
    return snapshot


def latest(root: Path, run_key: bytes) -> tuple[str, Snapshot] | None:
    """The newest checkpoint that verifies, skipping damaged ones with a warning."""
    candidates = checkpoints(root)
    for folder in reversed(candidates):
        try:
            return folder.name, verify_and_read(folder, run_key)
        except CheckpointError as exc:
            log.warning("checkpoint %s is damaged and is skipped: %s", folder.name, exc)
    if candidates:
        log.warning("no checkpoint of this run verifies; training starts from the beginning")
    return None
