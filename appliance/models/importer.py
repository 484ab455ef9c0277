"""``appliance model import``: bring a base model into the workspace, safely and atomically.

An import is built in a staging folder under ``ws.tmp_dir`` and renamed to
``models/NAME`` only after every check passed; the registry row and its audit row are then
written in one transaction. A refused, failed or cancelled import leaves nothing behind.

Layout of an imported model::

    models/NAME/meta.json     the registry record (kind base_model), manifest included
    models/NAME/files/        the model folder (config, weights, tokenizer); absent with --link
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from appliance.cancel import point_of_no_return
from appliance.destinations import relation_to_workspace
from appliance.errors import ModelImportError, NotFoundError, UsageError
from appliance.folders import manifest_digest, write_meta
from appliance.fsutil import CHUNK, fsync_dir, temp_name
from appliance.models import describe as desc
from appliance.models.safety import check_gguf_magic, scan_folder
from appliance.progress import Progress, no_progress
from appliance.quiet import quiet_libraries
from appliance.registry import Registry
from appliance.registry.refs import check_name, now, os_user
from appliance.registry.rows import BaseModelRow
from appliance.workspace import Workspace

"""``progress(done_bytes, total_bytes, stage)``; stages: checking, hashing, copying, converting,
saving, verifying."""

FILES_DIR = "files"
STAGING_PREFIX = "import-"


def import_model(
    ws: Workspace,
    reg: Registry,
    source: Path,
    name: str,
    *,
    link: bool = False,
    progress: Progress | None = None,
) -> BaseModelRow:
    """Import a Hugging Face safetensors folder or a single ``.gguf`` file as base model ``name``.

    Holds the workspace's writer lock for the whole import.

    Args:
        ws: the workspace.
        reg: its open registry.
        source: a model folder (config.json, *.safetensors, tokenizer) or a ``.gguf`` file.
        name: the name the model gets in the workspace.
        link: reference a folder in place instead of copying it (its hashes are re-checked
            before each use); not possible for GGUF, which is converted.
        progress: called with ``(done_bytes, total_bytes, stage)``.

    Returns:
        The registry row of the new base model.

    Raises:
        ModelImportError: the model was refused; the message names the file and the reason.
        UsageError: bad name, name taken, or ``--link`` with a GGUF file.
    """
    check_name(name, "model name")
    report = progress or no_progress
    source = Path(source).expanduser().absolute()
    if not source.exists():
        raise UsageError(f"{source} does not exist; give a model folder or a .gguf file")
    is_gguf = source.is_file()
    if is_gguf and source.suffix.lower() != ".gguf":
        raise ModelImportError(
            f"refused {source}: a single file must be a .gguf model; other weight files must "
            "come in a Hugging Face folder (config.json, *.safetensors, tokenizer)"
        )
    if is_gguf and link:
        raise UsageError("--link works with model folders only; a GGUF file is converted")
    _check_source_apart(ws, source, link)
    # Taking the writer lock removes the staging folders of imports that were killed.
    with ws.writer("model import"):
        _check_name_free(ws, reg, name)
        staging = ws.tmp_dir / temp_name(f"{STAGING_PREFIX}{name}")
        staging.mkdir(mode=0o700)
        try:
            if is_gguf:
                fields = _stage_gguf(source, staging, report)
            else:
                fields = _stage_folder(source, staging, link, report)
            fields["path"] = str(source) if link else f"models/{name}/{FILES_DIR}"
            stamp = {"created_at": now(), "created_by": os_user()}
            write_meta(staging, "base_model", {"name": name, **fields, **stamp})
            target = ws.models_dir / name
            # The folder and its registry row appear together: a cancel (SIGTERM in a job) from
            # here on is ignored, so neither is ever left without the other.
            point_of_no_return()
            os.replace(staging, target)
            fsync_dir(ws.models_dir)
            try:
                reg.models.add(name, **fields)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return reg.models.get(name)


def _check_source_apart(ws: Workspace, source: Path, link: bool) -> None:
    """Refuse a source holding the workspace, or a link into the folders the appliance manages.

    A folder that contains the workspace would be scanned, hashed and copied into itself; a
    link into the workspace would point at files the appliance may replace or remove.
    """
    relation = relation_to_workspace(source, ws.home)
    if relation in ("is", "contains"):
        raise UsageError(
            f"{source} contains the workspace {ws.home.resolve()}; give the model's own folder"
        )
    if relation == "inside" and link:
        raise UsageError(
            f"{source} is inside the workspace; --link needs a model folder outside it (or "
            "import it without --link to copy it)"
        )


def _check_name_free(ws: Workspace, reg: Registry, name: str) -> None:
    try:
        reg.models.get(name)
    except NotFoundError:
        pass
    else:
        raise UsageError(f"a base model named {name!r} exists already; choose another --name")
    if (ws.models_dir / name).exists():
        raise UsageError(
            f"{ws.models_dir / name} exists but is not in the registry; run 'appliance verify "
            "--rebuild-index' to register it, or choose another --name"
        )


def _stage_folder(source: Path, staging: Path, link: bool, report: Progress) -> dict[str, Any]:
    if not source.is_dir():
        raise UsageError(f"{source} is neither a folder nor a .gguf file")
    report(0, 0, "checking")
    files = scan_folder(source)
    desc.check_tokenizer_files(source)
    if not (source / "config.json").is_file():
        raise ModelImportError(
            f"refused {source}: no config.json (not a Hugging Face model folder)"
        )
    desc.check_weights(source)  # header checks before anything reads the weights
    total = sum(p.stat().st_size for p in files)
    rels = [p.relative_to(source).as_posix() for p in files]
    if link:
        manifest = _hash_files(source, rels, total, report)
        folder = source
    else:
        folder = staging / FILES_DIR
        manifest = _copy_files(source, folder, rels, total, report)
    report(0, 0, "verifying")
    fields = _check_and_describe(folder, files_checked=not link)
    return {
        **fields,
        "format": "hf",
        "source": str(source),
        "source_sha256": None,
        "linked": link,
        "sha256": manifest_digest(manifest),
        "manifest": manifest,
        "total_bytes": total,
    }


def _check_and_describe(folder: Path, *, files_checked: bool) -> dict[str, Any]:
    """Full checks on the folder that will be used (the staged copy, or the linked source)."""
    if files_checked:
        scan_folder(folder)  # the copy is what will be loaded: check it, not only the source
    infos = desc.check_weights(folder)
    desc.check_tokenizer_files(folder)
    config = desc.load_transformers_config(folder)
    architecture = desc.check_architecture(config, folder)
    tokenizer = desc.load_tokenizer(folder)
    return desc.model_facts(folder, infos, config, tokenizer, architecture)


def _copy_files(
    source: Path, dest: Path, rels: list[str], total: int, report: Progress
) -> dict[str, str]:
    """Copy while hashing (one read of each file); returns the manifest of the copies."""
    manifest: dict[str, str] = {}
    done = 0
    dest.mkdir(mode=0o700)
    for rel in rels:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        digest = hashlib.sha256()
        with open(source / rel, "rb") as src, open(target, "xb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                report(done, total, "copying")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(target, 0o600)
        manifest[rel] = digest.hexdigest()
    for folder in {dest, *(dest / r for r in {str(Path(x).parent) for x in rels})}:
        fsync_dir(folder)
    return manifest


def _hash_files(folder: Path, rels: list[str], total: int, report: Progress) -> dict[str, str]:
    manifest: dict[str, str] = {}
    done = 0
    for rel in rels:
        digest = hashlib.sha256()
        with open(folder / rel, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                done += len(chunk)
                report(done, total, "hashing")
        manifest[rel] = digest.hexdigest()
    return manifest


def _stage_gguf(source: Path, staging: Path, report: Progress) -> dict[str, Any]:
    report(0, 0, "checking")
    check_gguf_magic(source)
    size = source.stat().st_size
    source_sha = _hash_files(source.parent, [source.name], size, report)[source.name]
    # Load from a folder holding only this file, so nothing else beside it is ever read.
    src_dir = staging / "src"
    src_dir.mkdir()
    (src_dir / source.name).symlink_to(source)
    folder = staging / FILES_DIR
    _convert_gguf(src_dir, source.name, folder, report)
    shutil.rmtree(src_dir)
    rels = [p.relative_to(folder).as_posix() for p in scan_folder(folder)]
    total = sum((folder / r).stat().st_size for r in rels)
    manifest = _hash_files(folder, rels, total, report)
    report(0, 0, "verifying")
    fields = _check_and_describe(folder, files_checked=False)
    return {
        **fields,
        "format": "gguf",
        "source": str(source),
        "source_sha256": source_sha,
        "linked": False,
        "sha256": manifest_digest(manifest),
        "manifest": manifest,
        "total_bytes": total,
    }


def _convert_gguf(src_dir: Path, filename: str, out: Path, report: Progress) -> None:
    """Dequantise a GGUF model with transformers and save it as a bf16 safetensors folder."""
    # Our own progress callback reports the stages; the libraries' bars would garble the CLI's.
    with quiet_libraries():
        _convert_gguf_quietly(src_dir, filename, out, report)


def _convert_gguf_quietly(src_dir: Path, filename: str, out: Path, report: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(0, 1, "converting")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            src_dir, gguf_file=filename, local_files_only=True, trust_remote_code=False
        )
        # float32 is the fast path for transformers' GGUF kernels; bf16 is applied for saving.
        model = AutoModelForCausalLM.from_pretrained(
            src_dir,
            gguf_file=filename,
            local_files_only=True,
            trust_remote_code=False,
            dtype=torch.float32,
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(
            f"refused {src_dir / filename}: transformers cannot load this GGUF file "
            f"({type(exc).__name__}: {first})"
        ) from None
    report(1, 1, "converting")
    report(0, 1, "saving")
    # save_pretrained refuses a model that still carries the GGUF quantizer marker
    # (docs/engineering-notes.md, "GGUF models: the quantizer marker").
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16)  # type: ignore[arg-type]
    out.mkdir(mode=0o700)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    report(1, 1, "saving")
