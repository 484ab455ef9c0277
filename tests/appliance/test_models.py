"""Base-model import: facts recorded, copy and link, shards, progress, and what is refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import IntegrityError, ModelImportError, UsageError
from appliance.folders import read_meta
from appliance.fsutil import sha256_file
from appliance.models import check_safetensors, import_model, resolve_model_for_use
from appliance.registry import Registry
from appliance.workspace import Workspace
from tests.helpers.cli import CliRunner


@pytest.fixture
def reg(ws: Workspace) -> Iterator[Registry]:
    with Registry.open(ws) as registry:
        yield registry


@pytest.fixture
def model_dir(tiny_llama: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model that a test may alter."""
    return Path(shutil.copytree(tiny_llama, tmp_path / "model"))


def _state(ws: Workspace) -> tuple[list[str], list[str], int, int]:
    """What an import could leave behind: folders, scratch, registry rows, audit rows."""
    with Registry.open(ws) as reg:
        rows = len(reg.models.all())
        audits = len(reg.audit_rows())
    return (
        sorted(str(p.relative_to(ws.home)) for p in ws.models_dir.rglob("*")),
        sorted(p.name for p in ws.tmp_dir.iterdir()),
        rows,
        audits,
    )


def _write_safetensors(path: Path, header: dict[str, object], data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


# -- a good import -------------------------------------------------------------------------------


def test_import_copies_with_manifest_and_records_facts(
    ws: Workspace, reg: Registry, tiny_llama: Path
) -> None:
    import math

    from safetensors import safe_open

    stages: list[tuple[int, int, str]] = []
    model = import_model(ws, reg, tiny_llama, "tiny", progress=lambda *a: stages.append(a))
    with safe_open(str(tiny_llama / "model.safetensors"), "pt") as handle:
        names = list(handle.keys())
        expected_params = sum(math.prod(handle.get_slice(k).get_shape()) for k in names)
    assert model["parameters"] == expected_params
    assert model["architecture"] == "LlamaForCausalLM"
    assert model["dtype"] == "float32"
    assert model["context_length"] == 512
    assert model["vocab_size"] == json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    assert model["has_chat_template"] is True
    assert model["linked"] is False
    files = ws.home / model["path"]
    assert files == ws.models_dir / "tiny" / "files"
    source_files = sorted(p.name for p in tiny_llama.iterdir())
    assert sorted(model["manifest"]) == source_files
    for name, digest in model["manifest"].items():
        assert sha256_file(files / name) == digest == sha256_file(tiny_llama / name)
    assert model["total_bytes"] == sum(p.stat().st_size for p in tiny_llama.iterdir())
    assert read_meta(ws.models_dir / "tiny")[1]["sha256"] == model["sha256"]
    assert list(ws.tmp_dir.iterdir()) == []
    assert [r["action"] for r in reg.audit_rows()] == ["model.import"]
    copying = [s for s in stages if s[2] == "copying"]
    assert copying[-1][0] == copying[-1][1] == model["total_bytes"]
    assert [s[0] for s in copying] == sorted(s[0] for s in copying)
    assert resolve_model_for_use(ws, reg, "tiny") == files


def test_imported_copy_loads_with_transformers(
    ws: Workspace, reg: Registry, tiny_llama: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    import_model(ws, reg, tiny_llama, "tiny")
    folder = resolve_model_for_use(ws, reg, "tiny")
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(loaded(ids).logits, original(ids).logits)


def test_linked_model_is_rechecked_before_each_use(
    ws: Workspace, reg: Registry, model_dir: Path
) -> None:
    model = import_model(ws, reg, model_dir, "linked", link=True)
    assert model["linked"] is True
    assert model["path"] == str(model_dir)
    assert not (ws.models_dir / "linked" / "files").exists()
    assert (ws.models_dir / "linked" / "meta.json").is_file()
    assert resolve_model_for_use(ws, reg, "linked") == model_dir

    with open(model_dir / "tokenizer.json", "a", encoding="utf-8") as handle:
        handle.write(" ")
    with pytest.raises(IntegrityError, match=r"tokenizer\.json changed since the import"):
        resolve_model_for_use(ws, reg, "linked")


def test_linked_model_gaining_code_is_refused_for_use(
    ws: Workspace, reg: Registry, model_dir: Path
) -> None:
    import_model(ws, reg, model_dir, "linked", link=True)
    (model_dir / "modeling_evil.py").write_text("raise SystemExit\n")
    with pytest.raises(IntegrityError, match=r"modeling_evil\.py"):
        resolve_model_for_use(ws, reg, "linked")


def test_sharded_safetensors_with_index(ws: Workspace, reg: Registry, tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    sharded = ws.home.parent / "sharded"
    original = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    original.save_pretrained(sharded, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, sharded / name)
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1
    model = import_model(ws, reg, sharded, "sharded")
    unsharded = import_model(ws, reg, tiny_llama, "plain")
    assert model["parameters"] == unsharded["parameters"]
    assert set(shards) < set(model["manifest"])

    (sharded / shards[0]).unlink()
    with pytest.raises(ModelImportError, match=rf"names the shard {shards[0]}, which is missing"):
        import_model(ws, reg, sharded, "broken")


@pytest.mark.usefixtures("ws")  # the workspace the CLI imports into
def test_cli_import_list_show(cli: CliRunner, tiny_llama: Path) -> None:
    imported = cli("model", "import", str(tiny_llama), "--name", "tiny", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["architecture"] == "LlamaForCausalLM"
    listed = json.loads(cli("model", "list", "--json").stdout)
    assert [m["name"] for m in listed] == ["tiny"]
    assert "manifest" not in listed[0]
    shown = json.loads(cli("model", "show", "tiny", "--json").stdout)
    assert shown["adapters"] == []
    assert "model.safetensors" in shown["manifest"]
    missing = cli("model", "show", "nope")
    assert missing.returncode == 1
    assert missing.err_lines == ["error: no base model named 'nope' (base models: tiny)"]
    again = cli("model", "import", str(tiny_llama), "--name", "tiny")
    assert again.returncode == 2
    assert "exists already" in again.err_lines[-1]


# -- refusals ------------------------------------------------------------------------------------


def test_pickle_weights_are_refused_and_never_unpickled(
    cli: CliRunner, ws: Workspace, model_dir: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "CANARY"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return (Path.touch, (canary,))

    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    before = _state(ws)
    result = cli("model", "import", str(model_dir), "--name", "evil")
    assert result.returncode == 1
    assert len(result.err_lines) == 1
    assert "pytorch_model.bin" in result.err_lines[0]
    assert "pickle" in result.err_lines[0]
    assert not canary.exists()
    assert _state(ws) == before
    pickle.loads((model_dir / "pytorch_model.bin").read_bytes())  # the payload is real
    assert canary.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".pkl"])
def test_other_pickle_suffixes_are_refused(
    ws: Workspace, reg: Registry, model_dir: Path, suffix: str
) -> None:
    (model_dir / f"extra{suffix}").write_bytes(b"\x80\x04.")
    with pytest.raises(ModelImportError, match=rf"extra\{suffix}.*pickle"):
        import_model(ws, reg, model_dir, "evil")


def test_auto_map_and_python_files_are_refused(
    ws: Workspace, reg: Registry, model_dir: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "CANARY"
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model_dir / "config.json").write_text(json.dumps(config))
    before = _state(ws)
    with pytest.raises(ModelImportError, match=r"config\.json.*auto_map"):
        import_model(ws, reg, model_dir, "evil")
    (model_dir / "modeling_evil.py").write_text(f"open({str(canary)!r}, 'w').close()\n")
    with pytest.raises(ModelImportError, match=r"modeling_evil\.py.*code"):
        import_model(ws, reg, model_dir, "evil")
    assert not canary.exists()
    assert _state(ws) == before


def test_files_that_are_not_what_they_claim_are_refused(
    ws: Workspace, reg: Registry, model_dir: Path
) -> None:
    before = _state(ws)
    fifo = model_dir / "notes.txt"
    os.mkfifo(fifo)  # copying it would block forever, holding the writer lock
    with pytest.raises(ModelImportError, match=r"notes\.txt: not a regular file \(a FIFO"):
        import_model(ws, reg, model_dir, "odd")
    fifo.unlink()
    (model_dir / "zero.json").symlink_to("/dev/zero")
    with pytest.raises(ModelImportError, match=r"zero\.json: a symbolic link that does not"):
        import_model(ws, reg, model_dir, "odd")
    (model_dir / "zero.json").unlink()
    (model_dir / "extra.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelImportError, match=r"extra\.json: not valid JSON \(nested too"):
        import_model(ws, reg, model_dir, "odd")
    with (model_dir / "extra.json").open("wb") as handle:
        handle.truncate(50 * 1024**3)  # sparse: read whole, it would exhaust memory
    with pytest.raises(ModelImportError, match=r"extra\.json: a JSON file of 53,687,091,200"):
        import_model(ws, reg, model_dir, "odd")
    assert _state(ws) == before


def test_python_file_alone_is_refused(ws: Workspace, reg: Registry, model_dir: Path) -> None:
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "helper.py").write_text("")
    with pytest.raises(ModelImportError, match=r"sub/helper\.py"):
        import_model(ws, reg, model_dir, "evil")


def test_truncated_safetensors_is_refused(cli: CliRunner, ws: Workspace, model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    before = _state(ws)
    result = cli("model", "import", str(model_dir), "--name", "cut")
    assert result.returncode == 1
    assert len(result.err_lines) == 1
    assert "model.safetensors" in result.err_lines[0]
    assert "points outside the file" in result.err_lines[0]
    assert _state(ws) == before


def test_header_claiming_a_100_gb_tensor_is_refused(
    ws: Workspace, reg: Registry, model_dir: Path
) -> None:
    huge = 100 * 10**9
    _write_safetensors(
        model_dir / "model.safetensors",
        {"lm_head.weight": {"dtype": "F32", "shape": [huge // 4], "data_offsets": [0, huge]}},
        b"\0" * 64,
    )
    before = _state(ws)
    with pytest.raises(ModelImportError, match=r"model\.safetensors.*points outside the file"):
        import_model(ws, reg, model_dir, "huge")
    assert _state(ws) == before


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x01\x02", "truncated safetensors file"),
        (struct.pack("<Q", 2**40) + b"{}", "over the 100000000-byte limit"),
        (struct.pack("<Q", 500) + b"{}", "header claims 500 bytes"),
        (struct.pack("<Q", 5) + b"{nope", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 100_000) + b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    ],
)
def test_malformed_headers_are_refused(tmp_path: Path, raw: bytes, reason: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(ModelImportError, match=rf"bad\.safetensors.*{reason}"):
        check_safetensors(path)


@pytest.mark.parametrize(
    ("entry", "data", "reason"),
    [
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, 8, "needs 8 bytes"),
        ({"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}, 8, "unknown dtype"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, 8, "malformed shape"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, 8, "malformed data_offsets"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, 16, "extra or missing bytes"),
    ],
)
def test_inconsistent_tensor_entries_are_refused(
    tmp_path: Path, entry: dict[str, object], data: int, reason: str
) -> None:
    path = tmp_path / "bad.safetensors"
    _write_safetensors(path, {"w": entry}, b"\0" * data)
    with pytest.raises(ModelImportError, match=reason):
        check_safetensors(path)


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    _write_safetensors(path, {"a": entry, "b": entry}, b"\0" * 8)
    with pytest.raises(ModelImportError, match="overlaps another tensor"):
        check_safetensors(path)


def test_a_valid_header_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    _write_safetensors(
        path,
        {
            "__metadata__": {"format": "pt"},
            "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
        },
        b"\0" * 16,
    )
    info = check_safetensors(path)
    assert (info.tensors, info.parameters) == (2, 7)
    assert info.elements_by_dtype == {"BF16": 6, "F32": 1}


def test_missing_tokenizer_is_refused(ws: Workspace, reg: Registry, model_dir: Path) -> None:
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelImportError, match="no tokenizer"):
        import_model(ws, reg, model_dir, "notok")
    assert _state(ws)[:3] == ([], [], 0)


def test_unknown_architecture_is_refused(ws: Workspace, reg: Registry, model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["MadeUpForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelImportError, match="MadeUpForCausalLM"):
        import_model(ws, reg, model_dir, "madeup")
    config["model_type"] = "not-a-model-type"
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelImportError, match=r"config\.json"):
        import_model(ws, reg, model_dir, "madeup")
    assert _state(ws)[:3] == ([], [], 0)


def test_failed_registry_write_removes_the_imported_folder(
    ws: Workspace, reg: Registry, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(reg.models, "add", fail)
    with pytest.raises(OSError, match="disk full"):
        import_model(ws, reg, tiny_llama, "tiny")
    assert list(ws.models_dir.iterdir()) == []
    assert list(ws.tmp_dir.iterdir()) == []


def test_a_failed_linked_import_leaves_the_source_alone(
    ws: Workspace, reg: Registry, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted((p.name, p.stat().st_size) for p in model_dir.iterdir())

    def fail(*args: object, **kwargs: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(reg.models, "add", fail)
    with pytest.raises(OSError, match="disk full"):
        import_model(ws, reg, model_dir, "linked", link=True)
    assert sorted((p.name, p.stat().st_size) for p in model_dir.iterdir()) == before
    assert list(ws.models_dir.iterdir()) == []
    assert list(ws.tmp_dir.iterdir()) == []


def test_sources_that_hold_the_workspace_or_link_into_it_are_refused(
    ws: Workspace, reg: Registry, tiny_llama: Path
) -> None:
    for source in (ws.home, ws.home.parent, ws.home / "models" / ".."):
        for link in (False, True):
            with pytest.raises(UsageError, match=r"contains the workspace .*model's own folder"):
                import_model(ws, reg, source, "home", link=link)
    copied = shutil.copytree(tiny_llama, ws.home / "tmp" / "model")
    with pytest.raises(UsageError, match=r"inside the workspace; --link needs a model folder"):
        import_model(ws, reg, Path(copied), "inside", link=True)
    assert reg.models.all() == []


def test_bad_sources_are_refused(ws: Workspace, reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        import_model(ws, reg, tmp_path / "nothing", "x")
    single = tmp_path / "weights.safetensors"
    single.write_bytes(b"")
    with pytest.raises(ModelImportError, match=r"must be a \.gguf model"):
        import_model(ws, reg, single, "x")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOTGGUF!" * 4)
    with pytest.raises(ModelImportError, match="not a GGUF file"):
        import_model(ws, reg, fake, "x")
    with pytest.raises(UsageError, match="--link"):
        import_model(ws, reg, fake, "x", link=True)
    with pytest.raises(UsageError, match="invalid model name"):
        import_model(ws, reg, fake, "../escape")
    assert _state(ws)[:3] == ([], [], 0)


def test_import_holds_the_workspace_writer_lock(
    ws: Workspace, reg: Registry, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance import workspace
    from appliance.errors import WorkspaceLockedError

    monkeypatch.setattr(workspace, "LOCK_WAIT_S", 0.2)
    with ws.writer("dataset import"), pytest.raises(WorkspaceLockedError, match="dataset import"):
        import_model(ws, reg, tiny_llama, "tiny")
    assert _state(ws)[:3] == ([], [], 0)


def test_staging_left_by_a_killed_import_is_cleared(
    ws: Workspace, reg: Registry, tiny_llama: Path
) -> None:
    leftover = ws.tmp_dir / "import-big-0badc0de" / "files"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half a model")
    (ws.tmp_dir / "someone-elses-file").write_bytes(b"kept")
    import_model(ws, reg, tiny_llama, "tiny")
    assert sorted(p.name for p in ws.tmp_dir.iterdir()) == ["someone-elses-file"]
