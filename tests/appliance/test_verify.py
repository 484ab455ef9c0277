"""``appliance verify``: every artifact hash, the database and the audit chain; --rebuild-index."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from appliance.fsutil import sha256_file
from appliance.models import import_model
from appliance.registry import Registry
from appliance.registry.rebuild import rebuild_index
from appliance.verify import verify_workspace
from appliance.workspace import Workspace
from tests.helpers.cli import CliRunner
from tests.helpers.registry_data import add_adapter, add_dataset


def _export_path(ws: Workspace) -> Path:
    """Where the fixture's export lies: outside the workspace, as every export does."""
    return ws.home.parent / "serve" / "a-1.gguf"


@pytest.fixture
def filled(ws: Workspace, tiny_llama: Path) -> Workspace:
    """A workspace with a model, a dataset file, a run, an adapter, a tag and an export."""
    data = ws.datasets_dir / "docs-1.enc"
    data.write_bytes(b"encrypted rows")
    with Registry.open(ws) as reg:
        import_model(ws, reg, tiny_llama, "base")
        add_dataset(reg, path="datasets/docs-1.enc", file_sha256=sha256_file(data))
        add_adapter(reg, "a")
        reg.tags.set("a@1", "production")
        export = _export_path(ws)
        export.parent.mkdir()
        export.write_bytes(b"gguf bytes")
        reg.exports.add("a@1", format="gguf", path=export)
    return ws


def _findings(ws: Workspace) -> list[str]:
    with Registry.open(ws) as reg:
        return verify_workspace(ws, reg).findings


def test_clean_workspace_passes(filled: Workspace, cli: CliRunner) -> None:
    assert _findings(filled) == []
    result = cli("verify")
    assert result.returncode == 0, result.stderr
    assert "verify: all checks passed" in result.stdout
    report = json.loads(cli("verify", "--json").stdout)
    assert report["ok"] is True
    checked = {s["title"].split(" (")[0]: s["checked"] for s in report["sections"]}
    assert checked["base models"] == 1
    assert checked["dataset versions"] == 1
    assert checked["adapter versions"] == 1
    assert checked["exports"] == 1


def test_empty_folders_of_earlier_versions_are_no_finding(filled: Workspace) -> None:
    assert not (filled.home / "exports").exists()  # no longer made
    for name in ("exports", "logs"):
        (filled.home / name).mkdir(mode=0o700)
    assert _findings(filled) == []
    (filled.home / "logs" / "old.log").write_text("x")
    assert _findings(filled) == [
        "unknown file logs/old.log: in a folder the appliance no longer uses (left in place)"
    ]


def test_changed_model_file_fails_verify_with_a_readable_report(
    filled: Workspace, cli: CliRunner
) -> None:
    weights = filled.models_dir / "base" / "files" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a weight changes; the header stays valid
    weights.write_bytes(bytes(data))
    result = cli("verify")
    assert result.returncode == 1
    assert f"FAIL model base: {weights} changed since the import (sha256)" in result.stdout
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith("error: verify found 1 problem(s)")


@pytest.mark.parametrize(
    ("artifact", "expected"),
    [
        ("datasets/docs-1.enc", "dataset docs@1"),
        ("adapters/a/1/adapter.enc", "adapter a@1"),
        ("models/base/files/tokenizer.json", "model base"),
    ],
)
def test_each_kind_of_artifact_is_checked(filled: Workspace, artifact: str, expected: str) -> None:
    path = filled.home / artifact
    path.write_bytes(path.read_bytes() + b"!")
    findings = _findings(filled)
    assert findings
    assert all(f.startswith(expected) for f in findings)
    assert any("changed" in f for f in findings)
    path.unlink()
    gone = _findings(filled)
    assert gone
    assert all(f.startswith(expected) for f in gone)


def test_a_changed_export_is_a_finding_and_a_moved_one_a_warning(filled: Workspace) -> None:
    export = _export_path(filled)
    export.write_bytes(b"gguf bytes, edited")
    with Registry.open(filled) as reg:
        report = verify_workspace(filled, reg)
    assert report.findings == [
        f"export of a@1: {export} changed since it was registered (sha256 differs)"
    ]
    export.unlink()
    with Registry.open(filled) as reg:
        report = verify_workspace(filled, reg)
    assert report.findings == []
    warnings = [w for section in report.sections for w in section.warnings]
    assert warnings == [f"export of a@1: {export} is gone (moved away?)"]


def test_audit_tampering_and_unregistered_folders_are_findings(filled: Workspace) -> None:
    conn = sqlite3.connect(filled.registry_path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET user = 'mallory' WHERE seq = 2")
    conn.close()
    (filled.models_dir / "stray").mkdir()
    (filled.models_dir / "stray" / "meta.json").write_text('{"kind": "base_model"}')
    findings = _findings(filled)
    assert "audit row 2: its content does not match its hash (it was edited)" in findings
    assert any("trigger audit_no_update is missing" in f for f in findings)
    assert any("models/stray: a model folder not in the registry" in f for f in findings)


def test_rebuild_index_restores_rows_from_meta_files(filled: Workspace, cli: CliRunner) -> None:
    with Registry.open(filled) as reg:
        before = reg.adapters.lineage("a@1")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{filled.registry_path}{suffix}").unlink(missing_ok=True)
    # A workspace of an earlier version has an exports/ folder; somebody left a file there.
    stray = filled.home / "exports" / "a-1.gguf"
    stray.parent.mkdir()
    stray.write_bytes(b"gguf bytes")

    result = cli("verify", "--rebuild-index")
    assert "rebuild: there was no registry; built one from the workspace folders" in result.stdout
    assert "rebuild: added base model base" in result.stdout
    assert "rebuild: added dataset docs@1" in result.stdout
    assert "rebuild: added adapter a@1" in result.stdout
    # A file nothing accounts for is reported, never deleted.
    assert (
        "rebuild: could not account for exports/a-1.gguf: in a folder the appliance no longer "
        "uses; it was left in place" in result.stdout
    )
    assert result.returncode == 1
    assert result.err_lines[-1].startswith("error: verify found 1 problem(s); the first: unknown")
    assert stray.is_file()
    # Exports are known only to the registry (they lie outside the workspace): a registry
    # rebuilt from nothing has none, and the exported file is left alone.
    assert _export_path(filled).is_file()
    with Registry.open(filled) as reg:
        after = reg.adapters.lineage("a@1")
        assert before["base_model"] is not None
        assert reg.models.get("base")["sha256"] == before["base_model"]["sha256"]
        assert [r["action"] for r in reg.audit_rows()] == ["registry.rebuild"]
    for key in ("sha256", "metrics", "lib_versions", "config", "seed", "base_model", "path"):
        assert after[key] == before[key], key
    assert after["run"] == before["run"]
    # Dataset versions describe themselves now: the run keeps its lineage link.
    assert after["dataset"] == before["dataset"]


def test_damaged_database_is_kept_aside_and_rebuilt(filled: Workspace, cli: CliRunner) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{filled.registry_path}{suffix}").unlink(missing_ok=True)
    filled.registry_path.write_bytes(b"garbage" * 1000)
    broken = cli("verify")
    assert broken.returncode == 1
    assert len(broken.err_lines) == 1
    assert "--rebuild-index" in broken.err_lines[0]

    fixed = cli("verify", "--rebuild-index")
    assert "the registry was damaged (file is not a database)" in fixed.stdout
    assert "the damaged file is kept as registry.sqlite.damaged-" in fixed.stdout
    kept = list(filled.home.glob("registry.sqlite.damaged-*"))
    assert len(kept) == 1
    assert kept[0].read_bytes() == b"garbage" * 1000
    with Registry.open(filled) as reg:
        assert reg.adapters.version("a")["version"] == 1
        assert reg.datasets.version("docs")["version"] == 1


def test_rebuild_salvages_tags_and_exports_from_a_damaged_database(filled: Workspace) -> None:
    with Registry.open(filled) as reg:
        reg.evaluations.add(
            "a@1", dataset="docs", dataset_version=1, split="eval", metrics={"x": 1}
        )
        reg.golden_sets.set("a", "docs", 1)
    # A database that opens but fails integrity_check: corrupt an index page's content.
    with Registry.open(filled) as reg:
        reg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn = sqlite3.connect(filled.registry_path, isolation_level=None)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = replace(sql, 'ON runs (base_model_id)', "
        "'ON runs (state)') WHERE name = 'runs_base_model'"
    )
    conn.close()
    actions = rebuild_index(filled)
    assert actions[0].startswith("the registry was damaged (integrity_check: ")
    assert "added dataset docs@1" in actions
    assert "salvaged tag a@production -> version 1" in actions
    assert f"salvaged export of a@1 ({_export_path(filled)})" in actions
    # Evaluation results and golden sets exist only in the registry: salvaged too.
    assert "salvaged an evaluation of a@1 on docs@1" in actions
    assert "salvaged the golden set of a" in actions
    with Registry.open(filled) as reg:
        dataset = reg.adapters.lineage("a@production")["dataset"]
        assert dataset is not None
        assert dataset["name"] == "docs"
        assert [e["metrics"] for e in reg.evaluations.all("a@1")] == [{"x": 1}]
        golden = reg.golden_sets.get("a")
        assert golden is not None
        assert verify_workspace(filled, reg).ok
