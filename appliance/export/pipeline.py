"""One export, start to finish: checks, build in a staging folder, verify, rename, record.

The staging folder sits next to the destination (``.NAME.partial-xxxx``), so plaintext weights
are only ever written where the user asked, and the final rename is atomic on that file
system. Nothing reaches the destination, the registry or the audit log's ``export.create``
until the reloaded files verified; any failure (verification, cancel, full disk) removes the
staging folder and leaves an existing destination untouched.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import os
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance import adapters, destinations
from appliance.cancel import point_of_no_return
from appliance.errors import DestinationError, ExportError
from appliance.export import card, gguf_writer, merge, modelfile, verify
from appliance.export.options import ExportOptions, VerificationFailedError, check_cancel
from appliance.export.preflight import BYTES_PER_PARAM, check_space, estimate_bytes
from appliance.folders import manifest_digest
from appliance.fsutil import fsync_dir, sha256_file
from appliance.models import resolve_model_for_use
from appliance.progress import Progress, no_progress
from appliance.quiet import quiet_libraries
from appliance.registry import Registry
from appliance.registry.rows import AdapterVersionRow, LineageRow


class AdapterReader(Protocol):
    """What can decrypt the adapter's vault object: the unlocked
    :class:`~appliance.vault.Vault` (CLI), or the :class:`~appliance.jobs.KeyRing` an export
    job was handed (desktop app), which holds that one object's key and no other."""

    def read(self, path: Path, object_id: str, what: str) -> bytearray: ...


@dataclass
class ExportResult:
    """A verified export, in place and recorded."""

    ref: str
    format: str
    path: Path
    files: list[str]
    bytes: int
    sha256: str
    export_id: int
    verification: dict[str, Any]
    details: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.export_id,
            "adapter": self.ref,
            "format": self.format,
            "path": str(self.path),
            "files": self.files,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "verification": self.verification,
            "details": self.details,
            "warnings": self.warnings,
        }


def export_adapter(
    vault: AdapterReader,
    reg: Registry,
    ref: str,
    options: ExportOptions,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> ExportResult:
    """Export adapter version ``ref`` (NAME[@N|@TAG]) as ``options`` say, verified.

    Holds the workspace's writer lock throughout. ``progress(done, total, stage)`` is called
    from this thread, with the stages checking, loading, reference, merging, writing (``done``
    and ``total`` count bytes), verifying and finishing; setting ``cancel`` stops the export at
    the next step. ``vault`` is the unlocked vault, or an export job's key ring (it only decrypts
    the adapter).

    Raises:
        NotFoundError: no such adapter version.
        IntegrityError: the adapter or its base model is damaged (nothing is written).
        DestinationError: the destination is refused (see :mod:`appliance.destinations`).
        ExportError: refused, failed verification, cancelled, or the disk is full; the
            destination is left as it was (:class:`VerificationFailedError` carries the
            figures of a failed verification).
    """
    report = progress or no_progress
    ws = reg.ws
    out = destinations.check_export_folder(options.out, force=options.force, workspace_home=ws.home)
    options = dataclasses.replace(options, out=out)
    with ws.writer("export"), quiet_libraries():
        report(0, 0, "checking")
        # Authenticated before any write.
        stored = adapters.locate(ws, reg, ref)
        blob = vault.read(stored.path, stored.object_id, stored.what)
        record, weights = stored.record, adapters.unpack_stored(stored, blob)
        del blob
        lineage = reg.adapters.lineage(record["ref"])
        base = lineage["base_model"]
        if base is None:
            raise ExportError(
                f"adapter {record['ref']} has no base model in its lineage (no training run "
                "recorded), so it cannot be merged or verified"
            )
        folder = resolve_model_for_use(ws, reg, base["name"])
        config = merge.read_config(folder)
        merge.refuse_quantized(config, folder)
        if options.format == "gguf":
            gguf_writer.check_supported(config)
            gguf_writer.check_tokenizer(folder)
        dtype = options.weights_dtype or merge.stored_dtype(config)
        adapter_bytes = sum(t.numel() * t.element_size() for t in weights.tensors.values())
        need = estimate_bytes(
            options.format,
            parameters=int(base.get("parameters") or 0),
            dtype=dtype,
            gguf_type=options.gguf_type,
            adapter_bytes=adapter_bytes,
        )
        check_space(out.parent, need)
        check_cancel(cancel)
        staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
        try:
            staging.mkdir(mode=0o700)
        except OSError as exc:
            raise DestinationError(
                f"cannot write in {out.parent}: {exc.strerror or exc}; choose a destination "
                "you can write to"
            ) from None
        try:
            build = _Build(options, record, lineage, weights, folder, config, dtype, staging)
            build.run(report, cancel)
            if not build.figures["passed"]:
                reg.audit(
                    "export.failed",
                    record["ref"],
                    {"format": options.format, "path": str(out), "verification": build.figures},
                )
                raise VerificationFailedError(
                    f"the {options.format} export of {record['ref']} failed verification "
                    f"({verify.verification_line(build.figures)}); its files were removed and "
                    "nothing was written to the destination: report this with the figures",
                    build.figures,
                )
            report(0, 0, "finishing")
            details = build.finish()
            # Publishing takes two steps (rename, registry row): a cancel from here on is
            # ignored, so the export is never left in place without its record or vice versa.
            point_of_no_return()
            return _install(reg, record["ref"], options, staging, details, build)
        except OSError as exc:
            raise _os_error(exc, out, record["ref"]) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class _Build:
    """The work inside the staging folder for one export."""

    def __init__(
        self,
        options: ExportOptions,
        record: AdapterVersionRow,
        lineage: LineageRow,
        weights: adapters.AdapterWeights,
        base_folder: Path,
        config: dict[str, Any],
        dtype: str,
        staging: Path,
    ) -> None:
        self.options = options
        self.record = record
        self.lineage = lineage
        if lineage["base_model"] is None:  # preflight refuses these before anything starts
            raise ExportError(f"{record['ref']} has no base model in the registry")
        self.base = lineage["base_model"]
        self.weights = weights
        self.base_folder = base_folder
        self.config = config
        self.dtype = dtype
        self.staging = staging
        self.figures: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.warnings: list[str] = []

    def run(self, report: Progress, cancel: threading.Event | None) -> None:
        tokenizer = merge.load_tokenizer(self.base_folder)
        translation = None
        if self.options.format == "gguf":
            try:
                translation = modelfile.translate(tokenizer)
            except ExportError as exc:
                self.warnings.append(f"no Modelfile written: {exc}")
        prompts = verify.probe_prompts(tokenizer)
        report(0, 0, "loading")
        check_cancel(cancel)
        model = merge.apply_adapter(merge.load_base(self.base_folder, self.dtype), self.weights)
        report(0, 0, "reference")
        reference = verify.run_probe(model, prompts)
        check_cancel(cancel)
        written = _Counter(report, self._write_total())
        if self.options.format == "adapter":
            merge.save_adapter(
                self.weights,
                self.staging,
                base_name=self.base["name"],
                base_sha256=self.base["sha256"],
                dtype=self.options.dtype,
            )
            report(0, 0, "verifying")
            reloaded = merge.load_saved_adapter(model.unload(), self.staging)
            candidate = verify.run_probe(reloaded, prompts)
            exact = self.options.dtype in (None, "fp32")
            self.figures = verify.compare(
                reference, candidate, dtype=self.dtype, require_greedy=exact
            )
            self.extra["lora_rank"] = self.weights.config.get("r")
            return
        report(0, 0, "merging")
        if self.options.format == "merged":
            # Merged a block at a time into the shards as they are written: the model that
            # computed the reference is never copied or modified.
            merge.save_merged(
                model,
                tokenizer,
                self.staging,
                self.dtype,
                self.options.max_shard_size,
                on_bytes=written,
                cancel=cancel,
            )
            del model
            gc.collect()
            report(0, 0, "verifying")
            reloaded = _load_merged(self.staging, self.dtype)
            self.figures = verify.compare(
                reference,
                verify.run_probe(reloaded, prompts),
                dtype=self.dtype,
                require_greedy=self.dtype == "fp32",
            )
            return
        merged = merge.merge(model)
        del model
        check_cancel(cancel)
        gguf_name = (
            f"{self.record['name']}-{self.record['version']}.{self.options.gguf_type.upper()}.gguf"
        )
        exact = self.dtype == "fp32"  # the file's values fit back into the model's tensors
        stats = gguf_writer.write_gguf(
            self.staging / gguf_name,
            merged.state_dict(),
            self.config,
            self.base_folder,
            self.options.gguf_type,
            model_name=self.record["ref"],
            write_back=exact,
            on_bytes=written,
            cancel=cancel,
        )
        # The merged model now holds exactly the file's (quantised) weights.
        quantised = verify.run_probe(merged, prompts) if exact else None
        del merged
        gc.collect()
        report(0, 0, "verifying")
        self.figures = _verify_gguf(
            self.staging, gguf_name, tokenizer, prompts, reference, quantised, self
        )
        self.figures["weight_error"] = stats["weight_error"]
        self.extra["gguf_file"] = gguf_name
        if translation is not None:
            self._write_modelfile(gguf_name, translation)

    def _write_total(self) -> int:
        params = int(self.base["parameters"] or 0)
        per = BYTES_PER_PARAM[
            self.options.gguf_type if self.options.format == "gguf" else self.dtype
        ]
        return int(params * per)

    def _write_modelfile(self, gguf_name: str, translation: modelfile.Translation) -> None:
        gen_path = self.base_folder / "generation_config.json"
        gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
        params = modelfile.parameters(gen, self.config.get("max_position_embeddings"))
        header = (
            f"{self.record['ref']} on {self.base['name']}, exported by the "
            f"appliance.\nollama create {self.record['name']} -f Modelfile"
        )
        text = modelfile.render_modelfile(gguf_name, translation, params, header)
        with open(self.staging / "Modelfile", "x", encoding="utf-8") as handle:
            handle.write(text)
        self.extra["modelfile_stops"] = translation.stops

    def finish(self) -> dict[str, Any]:
        """Write the model card and MANIFEST; returns the export's details."""
        export = {
            "adapter": self.record["ref"],
            "format": self.options.format,
            "dtype": self.dtype,
            "base_model": self.base["name"],
            "base_model_sha256": self.base["sha256"],
            **({"gguf_type": self.options.gguf_type} if self.options.format == "gguf" else {}),
            **self.extra,
        }
        text = card.model_card(
            lineage=self.lineage, export=export, verification=self.figures, out=self.options.out
        )
        card.write_card(self.staging, text)
        document = card.manifest(self.staging, export=export, verification=self.figures)
        card.write_manifest(self.staging, document)
        for rel in [*document["files"], card.MANIFEST]:
            _fsync(self.staging / rel)
        fsync_dir(self.staging)
        hashes = {**document["files"], card.MANIFEST: sha256_file(self.staging / card.MANIFEST)}
        total = sum((self.staging / rel).stat().st_size for rel in hashes)
        return {**export, "files": sorted(hashes), "bytes": total, "hashes": hashes}


def _verify_gguf(
    staging: Path,
    gguf_name: str,
    tokenizer: Any,
    prompts: list[list[int]],
    reference: verify.Probe,
    quantised: verify.Probe | None,
    build: _Build,
) -> dict[str, Any]:
    """Reload the GGUF file with transformers' own reader and compare; tokenizer included.

    The headline figures compare the file with the unmerged adapter (quantisation included,
    within a sanity bound); ``file_check`` compares it with the same quantised weights in
    memory, which must agree to float32 precision, greedy tokens included.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        staging,
        gguf_file=gguf_name,
        dtype=torch.float32,
        local_files_only=True,
        trust_remote_code=False,
    ).eval()
    candidate = verify.run_probe(model, prompts)
    del model
    figures = verify.compare(
        reference,
        candidate,
        dtype=build.dtype,
        gguf_type=build.options.gguf_type,
        require_greedy=False,
    )
    if quantised is not None:
        check = verify.compare(quantised, candidate, dtype="fp32", require_greedy=True)
        figures["file_check"] = check
        figures["passed"] = bool(figures["passed"] and check["passed"])
    gguf_tokenizer = AutoTokenizer.from_pretrained(
        staging, gguf_file=gguf_name, local_files_only=True, trust_remote_code=False
    )
    texts = [tokenizer.decode(ids) for ids in prompts]
    same = all(
        gguf_tokenizer(t, add_special_tokens=False)["input_ids"]
        == tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in texts
    )
    figures["tokenizer_match"] = same
    figures["passed"] = bool(figures["passed"] and same)
    return figures


def _load_merged(folder: Path, dtype: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=merge.torch_dtype(dtype),
        local_files_only=True,
        trust_remote_code=False,
    ).eval()


class _Counter:
    """Turns per-chunk byte counts into ``progress(done, total, "writing")`` calls."""

    def __init__(self, report: Progress, total: int) -> None:
        self.report = report
        self.total = total
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n
        self.report(self.done, max(self.total, self.done), "writing")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(
    reg: Registry,
    ref: str,
    options: ExportOptions,
    staging: Path,
    details: dict[str, Any],
    build: _Build,
) -> ExportResult:
    """Rename the verified folder into place, then record it; undo the rename if that fails."""
    out = options.out
    hashes: dict[str, str] = details.pop("hashes")
    digest = manifest_digest(hashes)
    # Checked again: the folder may have changed during a long export. Only an empty folder
    # or an earlier export is ever moved aside, and only its listed files are deleted.
    destinations.check_export_folder(out, force=options.force, workspace_home=reg.ws.home)
    old: Path | None = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.replace(out, old)
    os.replace(staging, out)
    fsync_dir(out.parent)
    registry_details = {
        **details,
        "verification": build.figures,
        "warnings": build.warnings,
    }
    try:
        export_id = reg.exports.add(
            ref, format=options.format, path=out, sha256=digest, details=registry_details
        )
    except BaseException:
        os.replace(out, staging)  # the caller removes the staging folder
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        left = destinations.remove_earlier_export(old)
        if left is not None:
            build.warnings.append(left)
    return ExportResult(
        ref=ref,
        format=options.format,
        path=out,
        files=details["files"],
        bytes=details["bytes"],
        sha256=digest,
        export_id=export_id,
        verification=build.figures,
        details=registry_details,
        warnings=build.warnings,
    )


def _os_error(exc: OSError, out: Path, ref: str) -> ExportError:
    if exc.errno == errno.ENOSPC:
        return ExportError(
            f"out of disk space while writing the export to {out.parent}; the partial output "
            "was removed: free some space or choose another --out"
        )
    if exc.errno is not None:
        return ExportError(
            f"cannot write the export to {out}: {exc.strerror or exc}; the partial output was "
            "removed"
        )
    # An OSError without errno comes from a library failing to read the model's files.
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ExportError(
        f"the export of {ref} failed while reading model files ({first}); run 'appliance "
        "verify' and re-import the base model if it reports a problem"
    )
