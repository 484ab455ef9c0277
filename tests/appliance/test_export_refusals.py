"""Exports that must not happen, or must leave nothing behind: refusals, full disk, cancel."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import torch

from appliance import workspace
from appliance.errors import DestinationError, ExportError, IntegrityError, UsageError
from appliance.export import (
    ExportCancelledError,
    ExportOptions,
    export_adapter,
    gguf_writer,
    merge,
    pipeline,
    shards,
    verify,
)
from appliance.registry import Registry
from appliance.registry.rows import ExportRow
from appliance.vault import Vault
from tests.helpers.adapters import PASSPHRASE, make_adapter, open_store, tiny_adapter_store
from tests.helpers.cli import CliRunner

Store = tuple[Vault, Registry, str]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Store]:
    torch.set_num_threads(1)
    vault, reg, ref = tiny_adapter_store(tmp_path_factory.mktemp("refusals"), tiny_llama)
    yield vault, reg, ref
    reg.close()


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _export_rows(reg: Registry, out: Path) -> list[ExportRow]:
    return [e for e in reg.exports.all() if e["path"] == str(out)]


def test_out_of_disk_space_removes_the_partial_output(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, reg, ref = store
    out = tmp_path / "dest"
    out.mkdir()
    (out / "keep.txt").write_text("the previous export")
    (out / "MANIFEST").write_text(json.dumps({"format": 1, "files": {"keep.txt": "0"}}))
    calls = {"n": 0}
    real_write = shards._write

    def full_disk(handle: IO[bytes], data: bytes | memoryview) -> None:
        calls["n"] += 1
        if calls["n"] > 5:  # header written, a few tensors in: then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(handle, data)

    monkeypatch.setattr(shards, "_write", full_disk)
    with pytest.raises(ExportError, match=r"out of disk space .* the partial output was removed"):
        export_adapter(vault, reg, ref, ExportOptions.checked("merged", out, force=True))
    assert calls["n"] > 5
    assert _left_in(tmp_path) == ["dest"]  # no staging folder left next to it
    assert _left_in(out) == ["MANIFEST", "keep.txt"]  # --force replaces only after success
    assert _export_rows(reg, out) == []


def test_too_little_free_space_is_refused_before_writing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, reg, ref = store

    class Usage:
        free = 1024

    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(ExportError, match=r"not enough disk space .* needs about"):
        export_adapter(vault, reg, ref, ExportOptions.checked("gguf", tmp_path / "g"))
    assert _left_in(tmp_path) == []


def test_damaged_adapter_is_refused_before_anything_is_written(
    tmp_path: Path, tiny_llama: Path
) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    vault, reg = open_store(ws)
    with reg:
        ref = make_adapter(vault, reg, tiny_llama, model_name="tiny", adapter_name="broken")
        blob = ws.adapters_dir / "broken" / "1" / "adapter.enc"
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
        dest = tmp_path / "exports"
        dest.mkdir()
        with pytest.raises(IntegrityError, match=r"adapter broken@1 is damaged"):
            export_adapter(vault, reg, ref, ExportOptions.checked("merged", dest / "m"))
        assert _left_in(dest) == []
        assert reg.exports.all() == []


def test_failed_verification_removes_files_and_is_audited(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, reg, ref = store
    monkeypatch.setattr(verify, "tolerance", lambda *args, **kwargs: -1.0)
    out = tmp_path / "m"
    with pytest.raises(ExportError, match=r"failed verification \(max \|Δlogit\|"):
        export_adapter(vault, reg, ref, ExportOptions.checked("merged", out, dtype="fp32"))
    assert _left_in(tmp_path) == []
    assert _export_rows(reg, out) == []
    failed = reg.audit_rows(action="export.failed")
    details = [
        r["details"] if isinstance(r["details"], dict) else json.loads(r["details"]) for r in failed
    ]
    assert any(d["path"] == str(out) and d["verification"]["passed"] is False for d in details)


def test_cancel_stops_and_cleans_up(store: Store, tmp_path: Path) -> None:
    vault, reg, ref = store
    cancel = threading.Event()

    def progress(_done: int, _total: int, stage: str) -> None:
        if stage == "writing":
            cancel.set()

    options = ExportOptions.checked("merged", tmp_path / "m", dtype="fp32")
    with pytest.raises(ExportCancelledError, match="export cancelled"):
        export_adapter(vault, reg, ref, options, progress=progress, cancel=cancel)
    assert _left_in(tmp_path) == []


def test_destination_inside_the_workspace_or_unwritable_is_refused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault, reg, ref = store
    with pytest.raises(DestinationError, match="inside the workspace"):
        export_adapter(vault, reg, ref, ExportOptions.checked("adapter", vault.ws.home / "x"))

    class Usage:
        free = 1 << 40

    # sysfs refuses new entries even to root (whom a chmod would not stop); it reports no
    # free space, which would be refused first, so the space check is told there is plenty.
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(DestinationError, match=r"cannot write in /sys\b"):
        export_adapter(vault, reg, ref, ExportOptions.checked("adapter", "/sys/exported"))
    assert not Path("/sys/exported").exists()


def test_unsupported_architecture_is_named_with_the_supported_ones() -> None:
    with pytest.raises(ExportError, match=r"GGUF export supports Llama, Mistral, Qwen2 and SmolLM"):
        gguf_writer.check_supported({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with pytest.raises(ExportError, match=r"rope scaling of type 'llama3'"):
        gguf_writer.check_supported(
            {"architectures": ["LlamaForCausalLM"], "rope_scaling": {"rope_type": "llama3"}}
        )
    assert gguf_writer.check_supported({"architectures": ["MistralForCausalLM"]}) == "llama"


def test_sentencepiece_tokenizer_is_refused_for_gguf(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "Metaspace"}})
    )
    with pytest.raises(ExportError, match="byte-level BPE tokenizers only"):
        gguf_writer.check_tokenizer(tmp_path)


def test_never_merges_into_a_quantised_base(tmp_path: Path) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "quantization_config": {"quant_method": "bitsandbytes"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"stored quantised \(bitsandbytes\)"):
        merge.load_base(tmp_path, "bf16")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("zip", "/tmp/x"), "--format 'zip' is not one of merged, adapter, gguf"),
        (("merged", "/tmp/x", {"dtype": "int8"}), "--dtype 'int8'"),
        (("merged", "/tmp/x", {"gguf_type": "q8_0"}), "--gguf-type only applies"),
        (("gguf", "/tmp/x", {"gguf_type": "q5_k"}), "--gguf-type 'q5_k'"),
        (("merged", "/tmp/x", {"max_shard_size": "lots"}), "is not a size"),
    ],
)
def test_bad_options_are_usage_errors(args: tuple[object, ...], message: str) -> None:
    kwargs = args[2] if len(args) > 2 else {}
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        ExportOptions.checked(str(args[0]), str(args[1]), **kwargs)  # type: ignore[arg-type]
    assert ExportOptions.checked("merged", "/tmp/x", max_shard_size="1.5GB").max_shard_size == int(
        1.5 * 1024**3
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "zip"}, "--format 'zip' is not one of merged, adapter, gguf"),
        ({"dtype": "int8"}, "--dtype 'int8' is not one of bf16, fp16, fp32"),
        ({"gguf_type": "Q8_0"}, "--gguf-type 'Q8_0' is not one of f16, q8_0, q4_0"),
        ({"max_shard_size": 0}, "--max-shard-size 0 is not a size in bytes"),
        ({"max_shard_size": "1GB"}, "--max-shard-size '1GB' is not a size in bytes"),
        ({"out": Path("relative")}, "--out 'relative' is not an absolute folder path"),
    ],
)
def test_options_are_valid_however_they_are_built(change: dict[str, object], message: str) -> None:
    """Direct construction and ``dataclasses.replace`` meet the same checks as ``checked``."""
    good = ExportOptions.checked("merged", "/tmp/x")
    with pytest.raises(UsageError) as info:
        dataclasses.replace(good, **change)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert ExportOptions(format="gguf", out=Path("/tmp/x"), gguf_type="q4_0").gguf_type == "q4_0"


def test_checked_normalises_case_size_text_and_folder(tmp_path: Path) -> None:
    options = ExportOptions.checked(
        "MERGED", "rel/out", dtype="FP32", max_shard_size="500MB", force=True
    )
    assert options == ExportOptions(
        format="merged",
        out=Path.cwd() / "rel" / "out",
        dtype="fp32",
        max_shard_size=500 * 1024**2,
        force=True,
    )
    assert ExportOptions.checked("gguf", tmp_path, gguf_type="Q4_0").gguf_type == "q4_0"


def test_cli_exports_and_refuses_an_existing_destination(
    ws: workspace.Workspace, cli: CliRunner, tiny_llama: Path, tmp_path: Path
) -> None:
    vault, reg = open_store(ws)
    with reg:
        make_adapter(vault, reg, tiny_llama, model_name="tiny", adapter_name="legal")
    env = {"APPLIANCE_PASSPHRASE": PASSPHRASE}
    out = tmp_path / "served"
    r = cli("export", "legal@1", "--format", "adapter", "--out", str(out), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no library progress bars or warnings around the CLI's own output
    record = json.loads(r.stdout)
    assert record["adapter"] == "legal@1"
    assert record["verification"]["passed"] is True
    assert (out / "adapter_config.json").is_file()
    r = cli("export", "legal", "--format", "adapter", "--out", str(out), env=env)
    assert r.returncode == 1
    assert r.err_lines == [
        f"error: {out} exists; choose another --out, or pass --force to replace it"
    ]
    r = cli("export", "legal", "--format", "tar", "--out", str(out), env=env)
    assert r.returncode == 2
    assert "--format 'tar'" in r.stderr


def test_a_merge_that_gives_nan_is_refused(tiny_llama: Path) -> None:
    from tests.helpers.adapters import random_lora

    weights = random_lora(tiny_llama, targets=("q_proj",))
    key = next(k for k in weights.tensors if "lora_B" in k)
    weights.tensors[key][0, 0] = float("nan")
    model = merge.apply_adapter(merge.load_base(tiny_llama, "fp32"), weights)
    with pytest.raises(ExportError, match=r"NaN or infinite weights in .*q_proj"):
        merge.merge(model)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` and what it holds, to prove nothing was touched."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = f"-> {path.readlink()}"
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = "folder"
    return found


def test_cli_force_never_deletes_what_it_did_not_write(tmp_path: Path, tiny_llama: Path) -> None:
    """The reported data loss: --force on a folder that holds the workspace, and variants."""
    home = tmp_path / "ws"
    ws, _ = workspace.init(home)
    vault, reg = open_store(ws)
    with reg:
        make_adapter(vault, reg, tiny_llama, model_name="tiny", adapter_name="legal")
    (tmp_path / "unrelated.txt").write_text("a file of the user beside the workspace")
    (tmp_path / "link-to-parent").symlink_to(tmp_path)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "adapter_config.json").write_text("{}")
    (earlier / "MANIFEST").write_text(json.dumps({"files": {"adapter_config.json": "0"}}))
    (earlier / "foreign.txt").write_text("not part of the export")
    cli = CliRunner(home)
    env = {"APPLIANCE_PASSPHRASE": PASSPHRASE}
    before = _snapshot(tmp_path)
    cases = {
        str(tmp_path): f"{tmp_path} contains the workspace {home}",
        str(tmp_path / "link-to-parent"): "link-to-parent contains the workspace",
        str(earlier): "is not an earlier export (it holds what its MANIFEST does not list: "
        "foreign.txt)",
    }
    for dest, message in cases.items():
        r = cli("export", "legal@1", "--format", "adapter", "--out", dest, "--force", env=env)
        assert r.returncode == 1, r.stderr
        assert len(r.err_lines) == 1
        assert message in r.stderr
    assert _snapshot(tmp_path) == before
    with Registry.open(ws) as reg:
        assert reg.exports.all() == []


def test_cli_protects_the_default_workspace_in_the_home_folder(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_home = tmp_path / "home" / "alice"
    fake_home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("APPLIANCE_HOME", raising=False)
    ws, _ = workspace.init(None)
    assert fake_home in ws.home.parents
    vault, reg = open_store(ws)
    with reg:
        make_adapter(vault, reg, tiny_llama, model_name="tiny", adapter_name="legal")
    (fake_home / "thesis.tex").write_text("years of work")
    before = _snapshot(fake_home)
    r = CliRunner(ws.home)(
        "export",
        "legal",
        "--format",
        "adapter",
        "--out",
        str(fake_home),
        "--force",
        env={"APPLIANCE_PASSPHRASE": PASSPHRASE, "HOME": str(fake_home)},
        home=False,
    )
    assert r.returncode == 1
    assert r.err_lines == [
        f"error: {fake_home} contains the workspace {ws.home}; an export there could "
        "overwrite it: choose a new folder outside the workspace"
    ]
    assert _snapshot(fake_home) == before
