"""Recovery that never makes things worse: rebuilds, damaged pages, read-only workspaces."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance import workspace
from appliance.datasets import store
from appliance.errors import PassphraseError, RegistryError, WorkspaceReadOnlyError
from appliance.folders import read_meta_file, sidecar_path
from appliance.registry import Registry
from appliance.registry import rebuild as rebuild_mod
from appliance.registry.dataset_versions import DatasetVersions
from appliance.registry.failures import (
    RegistryDamagedError,
    RegistryReadOnlyError,
    explain,
)
from appliance.registry.rebuild import rebuild_index
from appliance.unlocked import create_vault
from appliance.vault import Vault
from appliance.verify import verify_workspace
from appliance.workspace import Workspace, read_only_reason
from tests.helpers.cli import CliRunner
from tests.helpers.registry_data import add_adapter

PASS = "correct horse battery"
DATA = Path(__file__).resolve().parents[1] / "data" / "datasets" / "valid"


@pytest.fixture
def vaulted(ws: Workspace, cheap_kdf: None) -> Vault:  # noqa: ARG001 (used for its effect)
    """A workspace with a vault, datasets m@1, t@1 (deleted) and t@2."""
    vault = create_vault(ws, PASS, "alice", target_s=0)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        store.import_file(vault, reg, DATA / "messages.jsonl", "m")
        store.import_file(vault, reg, DATA / "text.txt", "t")
        store.delete_version(vault, reg, reg.datasets.version("t", 1))
        store.import_file(vault, reg, DATA / "text.txt", "t")
    return vault


def _checkpoint(ws: Workspace) -> None:
    with Registry.open(ws) as reg:
        reg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _truncate(ws: Workspace, keep: float = 0.5) -> bytes:
    _checkpoint(ws)
    data = ws.registry_path.read_bytes()
    ws.registry_path.write_bytes(data[: int(len(data) * keep)])
    return ws.registry_path.read_bytes()


def _corrupt_table(path: Path, table: str) -> None:
    """Flip bytes in the header of ``table``'s root page, as a failing disk would."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as handle:
        handle.seek((root[0] - 1) * size)
        page = bytearray(handle.read(16))
        handle.seek((root[0] - 1) * size)
        handle.write(bytes(b ^ 0xA5 for b in page))


def _listing(ws: Workspace) -> dict[str, bytes]:
    """Every file's content; SQLite's shared-memory and empty journal files left by any reader
    do not count."""
    return {
        str(p.relative_to(ws.home)): p.read_bytes()
        for p in sorted(ws.home.rglob("*"))
        if p.is_file()
        and p.name not in (".lock", "registry.sqlite-shm")
        and not (p.name == "registry.sqlite-wal" and p.stat().st_size == 0)
    }


# -- rebuild: all or nothing --------------------------------------------------------------------


def test_truncated_registry_is_rebuilt_from_the_folders_with_the_key(vaulted: Vault) -> None:
    ws = vaulted.ws
    damaged = _truncate(ws)
    actions = rebuild_index(ws, vaulted.audit_key)
    assert actions[0].startswith("the registry was damaged (")
    assert "the damaged file is kept as registry.sqlite.damaged-" in actions[0]
    assert {"added dataset m@1", "added dataset t@1", "added dataset t@2"} <= set(actions)
    assert not any(a.startswith("could not account") for a in actions), actions
    kept = [p for p in ws.home.glob("registry.sqlite.damaged-*") if p.name[-4:] != "-shm"]
    assert [p.read_bytes() for p in kept if not p.name.endswith("-wal")] == [damaged]

    with Registry.open(ws, audit_key=vaulted.audit_key) as reg:
        assert [(d["name"], d["version"]) for d in reg.datasets.versions()] == [("m", 1), ("t", 2)]
        assert reg.datasets.version("t", 1, include_deleted=True)["deleted_at"] is not None
        rows = store.load_rows(vaulted, reg.datasets.version("m"))
        assert len(rows) == 2
        chain = reg.verify_audit()
        assert chain.ok
        assert chain.keyed_rows == 1
        first = reg.audit_rows()[0]
        assert first["action"] == "registry.rebuild"
        assert first["details"]["damaged_sha256"]
        report = verify_workspace(ws, reg)
        assert report.ok, report.findings
        # A deleted version's number is never given out again, even after a rebuild.
        version = reg.datasets.add_version("t", path=None)
        assert version == 3
    # The second run finds a healthy registry and leaves it alone.
    again = rebuild_index(ws, vaulted.audit_key)
    assert again == ["the registry is healthy and already lists every folder; nothing was changed"]


def test_rebuild_without_the_key_of_a_vault_touches_nothing(vaulted: Vault) -> None:
    ws = vaulted.ws
    _truncate(ws)
    before = _listing(ws)
    with pytest.raises(
        PassphraseError, match=r"needs the workspace passphrase.*nothing was changed"
    ):
        rebuild_index(ws, None)
    assert _listing(ws) == before


def test_rebuild_that_fails_halfway_leaves_the_workspace_as_it_was(
    vaulted: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = vaulted.ws
    _truncate(ws)
    before = _listing(ws)

    def broken(*args: object) -> list[str]:
        raise OSError(errno.EIO, "simulated failure while reading a folder")

    monkeypatch.setattr(rebuild_mod, "_adapters", broken)
    with pytest.raises(OSError, match="simulated"):
        rebuild_index(ws, vaulted.audit_key)
    assert _listing(ws) == before
    assert not list(ws.home.glob("registry.sqlite.*"))


def test_healthy_registry_is_completed_in_place_never_replaced(vaulted: Vault) -> None:
    ws = vaulted.ws
    inode = ws.registry_path.stat().st_ino
    with Registry.open(ws, audit_key=vaulted.audit_key) as reg:
        # A row the registry lost while the file stayed healthy.
        reg.conn.execute("DELETE FROM dataset_versions WHERE name = 'm'")
    actions = rebuild_index(ws, vaulted.audit_key)
    assert actions == ["added dataset m@1"]
    assert ws.registry_path.stat().st_ino == inode
    assert not list(ws.home.glob("registry.sqlite.damaged-*"))
    with Registry.open(ws, audit_key=vaulted.audit_key) as reg:
        assert reg.datasets.version("m")["version"] == 1
        assert reg.audit_rows()[-1]["details"]["in_place"] is True


def test_registry_of_a_newer_version_is_left_alone(ws: Workspace) -> None:
    with Registry.open(ws) as reg:
        reg.conn.execute("PRAGMA user_version = 99")
    before = ws.registry_path.read_bytes()
    with pytest.raises(RegistryError, match="newer than this appliance"):
        rebuild_index(ws)
    assert ws.registry_path.read_bytes() == before
    assert not list(ws.home.glob("registry.sqlite.*"))


def test_dataset_versions_describe_themselves(vaulted: Vault) -> None:
    ws = vaulted.ws
    with Registry.open(ws, audit_key=vaulted.audit_key) as reg:
        versions = reg.datasets.versions(include_deleted=True)
    for row in versions:
        kind, record = read_meta_file(sidecar_path(ws.home / row["path"]))
        assert kind == "dataset_version"
        assert (record["name"], record["version"]) == (row["name"], row["version"])
        assert record["object_id"] == row["object_id"]
        assert record["deleted_at"] == row["deleted_at"]
        assert oct(sidecar_path(ws.home / row["path"]).stat().st_mode & 0o777) == "0o600"
    # Names, counts and hashes only: never a row of the data.
    plaintext = (DATA / "messages.jsonl").read_text().splitlines()[0]
    message = json.loads(plaintext)["messages"][0]["content"]
    for meta in ws.datasets_dir.glob("*.meta.json"):
        assert message not in meta.read_text()


def test_failed_import_leaves_neither_file_nor_metadata(
    vaulted: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = vaulted.ws
    before = sorted(p.name for p in ws.datasets_dir.iterdir())

    def fail(_self: DatasetVersions) -> list[str]:
        raise RegistryError("simulated failure after the metadata file was written")

    monkeypatch.setattr(DatasetVersions, "backfill_meta", fail)
    with Registry.open(ws, audit_key=vaulted.audit_key) as reg, pytest.raises(RegistryError):
        store.import_file(vaulted, reg, DATA / "alpaca.jsonl", "a")
    assert sorted(p.name for p in ws.datasets_dir.iterdir()) == before


def test_versions_from_older_releases_get_their_metadata(vaulted: Vault) -> None:
    ws = vaulted.ws
    with Registry.open(ws, audit_key=vaulted.audit_key) as reg:
        m = reg.datasets.version("m")
    meta = sidecar_path(ws.home / m["path"])
    meta.unlink()  # as written by a release before datasets carried metadata
    with Registry.open(ws, audit_key=vaulted.audit_key, readonly=True) as reg:
        report = verify_workspace(ws, reg)
    assert report.ok
    assert any(
        "dataset m@1: no metadata file beside it" in w for s in report.sections for w in s.warnings
    )
    # The next writer of datasets (or a rebuild) writes it.
    with Registry.open(ws, audit_key=vaulted.audit_key) as reg:
        store.import_file(vaulted, reg, DATA / "alpaca.jsonl", "a")
    assert meta.is_file()
    meta.unlink()
    assert rebuild_index(ws, vaulted.audit_key) == [
        "wrote the missing metadata file of dataset m@1"
    ]
    assert meta.is_file()


def test_legacy_dataset_is_salvaged_from_a_damaged_registry_when_readable(
    vaulted: Vault,
) -> None:
    ws = vaulted.ws
    with Registry.open(ws, audit_key=vaulted.audit_key) as reg:
        meta = sidecar_path(ws.home / reg.datasets.version("m")["path"])
    meta.unlink()
    _corrupt_table(ws.registry_path, "audit")
    actions = rebuild_index(ws, vaulted.audit_key)
    assert "salvaged dataset m@1 from the damaged registry" in actions
    assert "wrote the missing metadata file of dataset m@1" in actions
    assert meta.is_file()


# -- a damaged page: classified everywhere, never an internal error ------------------------------


@pytest.fixture
def small(ws: Workspace, tiny_llama: Path) -> Workspace:
    """A workspace without a vault: a base model, a run and a tagged adapter."""
    from appliance.models import import_model

    with Registry.open(ws) as reg:
        import_model(ws, reg, tiny_llama, "base")
        add_adapter(reg, "a", dataset=None)
        reg.tags.set("a@1", "production")
    return ws


def test_corrupted_audit_page_is_diagnosed_and_recovered(small: Workspace, cli: CliRunner) -> None:
    _corrupt_table(small.registry_path, "audit")
    verify = cli("verify")
    assert verify.returncode == 1
    assert "internal error" not in verify.stderr
    assert "FAIL registry: this part cannot be read (database disk image is malformed)" in (
        verify.stdout
    )
    assert "verify --rebuild-index" in verify.err_lines[-1]
    audit = cli("audit")
    assert audit.returncode == 1
    assert audit.err_lines == [audit.err_lines[-1]]
    assert "is damaged (database disk image is malformed)" in audit.err_lines[-1]
    assert "verify --rebuild-index" in audit.err_lines[-1]
    # Reading what is intact still works.
    assert cli("adapter", "list").returncode == 0

    fixed = cli("verify", "--rebuild-index")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "rebuild: added adapter a@1" in fixed.stdout
    assert "rebuild: salvaged tag a@production -> version 1" in fixed.stdout
    assert "verify: all checks passed" in fixed.stdout


def test_registry_failures_are_classified(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError) as notadb:
        sqlite3.connect(path).execute("SELECT 1 FROM sqlite_master").fetchall()
    assert isinstance(explain(notadb.value, path), RegistryDamagedError)
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly:
        ro.execute("INSERT INTO t VALUES (1)")
    ro.close()
    error = explain(readonly.value, path)
    assert isinstance(error, RegistryReadOnlyError)
    assert "is read-only" in str(error)
    assert "rebuild" not in str(error)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13
    assert "check the disk holding it and its free space" in str(explain(full, path))
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5
    assert "is busy" in str(explain(busy, path))


# -- read-only workspaces ---------------------------------------------------------------------


def test_read_only_reason_from_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_only_reason(tmp_path) is None

    class Flags:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: Flags())
    assert read_only_reason(tmp_path) == "a read-only file system"
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert read_only_reason(tmp_path) == "no write permission for this user"


def test_writer_on_a_read_only_workspace_is_told_so(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse(path: object, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    with (
        pytest.raises(WorkspaceReadOnlyError, match=r"is read-only .*'dataset import' changes it"),
        ws.writer("dataset import"),
    ):
        pass


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only for this user: permissions, or (for root, whom permissions do
    not stop) a read-only bind mount; skip where neither is possible."""
    if os.geteuid() != 0:
        paths = [folder, *folder.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p in reversed(paths):
                p.chmod(modes[p])
        return
    run = [["mount", "--bind", str(folder), str(folder)]]
    run.append(["mount", "-o", "remount,ro,bind", str(folder)])
    if subprocess.run(run[0], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root without permission to mount: read-only not simulable")
    try:
        if subprocess.run(run[1], capture_output=True, check=False).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)


def test_read_only_workspace_reads_and_refuses_writes_clearly(
    small: Workspace, cli: CliRunner
) -> None:
    before = small.registry_path.read_bytes()
    with read_only(small.home):
        assert read_only_reason(small.home) is not None
        for args in (("adapter", "show", "a@production"), ("run", "list"), ("verify",)):
            result = cli(*args)
            assert result.returncode == 0, (args, result.stderr)
            assert "usable SQLite" not in result.stderr
        for writes in (("adapter", "tag", "a@1", "staging"), ("verify", "--rebuild-index")):
            refused = cli(*writes)
            assert refused.returncode == 1
            assert len(refused.err_lines) == 1
            assert "is read-only" in refused.err_lines[0]
            assert "damaged" not in refused.err_lines[0]
    assert small.registry_path.read_bytes() == before
    with Registry.open(small) as reg:
        assert reg.adapters.version("a@production")["version"] == 1


def test_reader_opens_the_registry_read_only(small: Workspace) -> None:
    with Registry.open(small, readonly=True) as reg:
        assert reg.readonly
        assert reg.adapters.version("a")["version"] == 1
        with pytest.raises(RegistryError, match="opened read-only"):
            reg.tags.set("a@1", "x")
    with Registry.open(small) as reg:
        assert [t["tag"] for t in reg.tags.all("a")] == ["production"]


def test_fresh_workspace_registry_is_created_by_a_reader(tmp_path: Path) -> None:
    fresh, _ = workspace.init(tmp_path / "fresh")
    with Registry.open(fresh, readonly=True) as reg:
        assert reg.datasets.versions() == []
    assert fresh.registry_path.is_file()


def test_cli_rebuild_of_a_truncated_vault_registry_uses_the_passphrase_given(
    cli: CliRunner, home: Path
) -> None:
    env = {"APPLIANCE_PASSPHRASE": PASS}
    assert cli("init", "--kdf-time", "0", env=env).returncode == 0
    imported = cli("dataset", "import", str(DATA / "messages.jsonl"), "--name", "m", env=env)
    assert imported.returncode == 0, imported.stderr
    ws = workspace.open_workspace(home)
    _truncate(ws, keep=0.4)

    fixed = cli("verify", "--rebuild-index", env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "rebuild: added dataset m@1" in fixed.stdout
    assert "verify: all checks passed" in fixed.stdout
    listed = cli("dataset", "list", "--json")
    assert [d["name"] for d in json.loads(listed.stdout)] == ["m"]
    again = cli("verify", "--rebuild-index", env=env)
    assert again.returncode == 0
    assert "rebuild: the registry is healthy" in again.stdout
    assert len(list(home.glob("registry.sqlite.damaged-*[0-9]"))) == 1
