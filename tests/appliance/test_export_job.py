"""Export before and beside the CLI: the preflight (destination, size, free space), the export
job in a child process, and what an export wrote and how to serve it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from appliance import adapters
from appliance.errors import DestinationError, ExportError, IntegrityError, NotFoundError
from appliance.export import ExportOptions, card, preflight
from appliance.export.preflight import check_space, estimate_bytes, plan_export
from appliance.export.serving import exported_files, serving_commands
from appliance.jobs import JobProgress, JobRequest, run_job
from appliance.registry import Registry
from appliance.vault import Vault
from tests.helpers.adapters import make_adapter, tiny_adapter_store

Store = tuple[Vault, Registry, str]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Store]:
    torch.set_num_threads(1)
    vault, reg, ref = tiny_adapter_store(tmp_path_factory.mktemp("export-job"), tiny_llama)
    yield vault, reg, ref
    reg.close()


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


def test_preflight_estimates_the_size_and_refuses_what_will_not_fit(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _vault, reg, ref = store
    params = int(reg.models.get("tiny")["parameters"])
    gguf = plan_export(reg, ref, ExportOptions.checked("gguf", tmp_path / "g", gguf_type="q4_0"))
    assert gguf.ref == "legal@1"
    assert gguf.base_model == "tiny"
    assert gguf.space.need == int(params * 0.6 * 1.02) + preflight.OVERHEAD_BYTES
    assert gguf.space.fits
    assert gguf.space.folder == tmp_path
    fp32 = plan_export(reg, ref, ExportOptions.checked("merged", tmp_path / "m", dtype="fp32"))
    assert fp32.space.need == int(params * 4 * 1.02) + preflight.OVERHEAD_BYTES
    adapter = plan_export(reg, ref, ExportOptions.checked("adapter", tmp_path / "a"))
    assert adapter.space.need == adapter.adapter_path.stat().st_size + (1 << 20)
    assert adapter.space.describe().startswith("about 1.")

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: _Usage(1000))
    with pytest.raises(
        ExportError,
        match=r"^not enough disk space in .*: the export needs about .* MiB and 1000 B are free; "
        r"free some space or choose another destination$",
    ):
        plan_export(reg, ref, ExportOptions.checked("merged", tmp_path / "m"))
    assert check_space(tmp_path, 1000).fits
    assert list(tmp_path.iterdir()) == []


def test_check_space_refuses_one_byte_too_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: _Usage(5000))
    assert check_space(tmp_path / "not-yet" / "deeper", 5000).free == 5000
    with pytest.raises(ExportError, match=r"needs about 4\.9 KiB and 4\.9 KiB are free"):
        check_space(tmp_path, 5001)
    assert estimate_bytes(
        "adapter", parameters=10**9, dtype="bf16", gguf_type="q8_0", adapter_bytes=5
    ) == 5 + (1 << 20)


def test_preflight_refusals_name_the_problem(
    store: Store, tmp_path: Path, tiny_llama: Path
) -> None:
    vault, reg, ref = store
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    cases = {
        a_file: f"{a_file} is a file, not a folder",
        full: f"{full} is not empty and is not an earlier export",
        tmp_path / "nowhere" / "out": "the folder .*nowhere does not exist; create it first",
        vault.ws.home / "inside": "is inside the workspace",
    }
    for out, message in cases.items():
        with pytest.raises(DestinationError, match=message):
            plan_export(reg, ref, ExportOptions.checked("merged", out))
    assert a_file.read_text() == "keep"
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    doomed = make_adapter(vault, reg, tiny_llama, adapter_name="doomed")
    with vault.ws.writer("test"):
        adapters.delete_version(vault.ws, reg, doomed)
    with pytest.raises(NotFoundError, match=r"adapter doomed@1 was deleted at"):
        plan_export(reg, doomed, ExportOptions.checked("merged", tmp_path / "d"))


def test_export_job_is_the_cli_path_in_a_child(store: Store, tmp_path: Path) -> None:
    vault, reg, ref = store
    out = tmp_path / "merged"
    plan = plan_export(reg, ref, ExportOptions.checked("merged", out, dtype="fp32"))
    request = plan.request(vault)
    # Exactly the adapter's key travels (and the audit key, to record the export).
    assert list(request.keys) == [_object_id(plan)]
    assert request.audit_key == vault.audit_key
    assert "merged" not in " ".join(request.command())  # parameters go over stdin only
    stages: list[str] = []

    def on_event(event: object) -> None:
        if isinstance(event, JobProgress) and (not stages or stages[-1] != event.stage):
            stages.append(event.stage)

    outcome = run_job(request, on_event=on_event, timeout=600)
    data = outcome.data()
    assert stages == [
        "checking",
        "loading",
        "reference",
        "merging",
        "writing",
        "verifying",
        "finishing",
    ]
    figures = data["verification"]
    assert figures["passed"] is True
    assert figures["max_abs_diff"] <= figures["tolerance"]
    assert figures["greedy_tokens_matching"] == figures["greedy_tokens"]
    assert data["path"] == str(out)
    assert card.check_manifest(out) == []
    files = exported_files(out)
    assert {f.path for f in files} == set(data["files"]) - {"MANIFEST"}
    assert sum(f.bytes for f in files) + (out / "MANIFEST").stat().st_size == data["bytes"]
    (row,) = [e for e in reg.exports.all() if e["path"] == str(out)]
    assert row["sha256"] == data["sha256"]
    created = [r for r in reg.audit_rows(action="export.create") if r["object"] == ref]
    assert created
    assert created[-1]["keyed"]
    assert reg.verify_audit().ok
    commands = serving_commands(data, name="legal")
    assert [c.tool for c in commands] == ["vLLM", "transformers"]
    assert commands[0].command == f"HF_HUB_OFFLINE=1 vllm serve {out} --served-model-name legal"


def _object_id(plan: preflight.ExportPlan) -> str:
    from appliance.vault.objects import object_id_of

    return object_id_of(plan.adapter_path)


def test_export_job_refuses_bad_parameters_and_a_missing_key(store: Store, tmp_path: Path) -> None:
    vault, _reg, ref = store
    missing = run_job(JobRequest(kind="export", home=vault.ws.home, params={"format": "gguf"}))
    assert (missing.exit_code, missing.message) == (
        2,
        "export's 'adapter' must be a non-empty string",
    )
    no_key = run_job(
        JobRequest(
            kind="export",
            home=vault.ws.home,
            params={"adapter": ref, "format": "adapter", "out": str(tmp_path / "a")},
            audit_key=vault.audit_key,
        )
    )
    assert no_key.exit_code == 2
    assert no_key.message.startswith(f"this job was not given the key of adapter {ref}")
    assert list(tmp_path.iterdir()) == []


def test_serving_commands_follow_the_format(tmp_path: Path) -> None:
    gguf = serving_commands(
        {
            "format": "gguf",
            "path": "/srv/my models/legal",
            "files": ["legal-1.Q8_0.gguf", "Modelfile", "README.md", "MANIFEST"],
            "details": {"gguf_file": "legal-1.Q8_0.gguf"},
        },
        name="legal",
    )
    assert [c.command for c in gguf] == [
        "llama-cli -m '/srv/my models/legal/legal-1.Q8_0.gguf' -cnv",
        "llama-server -m '/srv/my models/legal/legal-1.Q8_0.gguf' --jinja --port 8080",
        "cd '/srv/my models/legal' && ollama create legal -f Modelfile && ollama run legal",
    ]
    adapter = serving_commands(
        {"format": "adapter", "path": "/srv/a", "files": [], "details": {"lora_rank": 12}},
        name="legal",
        base_folder=Path("/srv/base"),
    )
    assert adapter[0].command == (
        "HF_HUB_OFFLINE=1 vllm serve /srv/base --enable-lora --max-lora-rank 16 "
        "--lora-modules legal=/srv/a"
    )
    assert "PeftModel.from_pretrained(base, '/srv/a'" in adapter[1].command
    (tmp_path / "MANIFEST").write_text('{"files": {"gone.bin": "00"}}')
    with pytest.raises(IntegrityError, match=r"gone\.bin is listed in .* but missing"):
        exported_files(tmp_path)
    os.remove(tmp_path / "MANIFEST")
    with pytest.raises(IntegrityError, match="is not a readable export MANIFEST"):
        exported_files(tmp_path)
