"""The registry: schema and migrations, versions, tags, lineage, runs, exports, concurrency."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import adapter_folders
from appliance.errors import NotFoundError, RegistryError, UsageError
from appliance.folders import read_meta
from appliance.registry import MIGRATIONS, SCHEMA_VERSION, Registry
from appliance.registry.refs import Ref, parse_ref
from appliance.registry.schema import migrate
from appliance.workspace import Workspace
from tests.helpers.registry_data import add_adapter, add_dataset, add_fake_model


@pytest.fixture
def reg(ws: Workspace) -> Iterator[Registry]:
    with Registry.open(ws) as registry:
        yield registry


@pytest.fixture
def populated(reg: Registry) -> Registry:
    add_fake_model(reg)
    add_dataset(reg)
    return reg


def _schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    finally:
        conn.close()
    return [(str(n), str(s)) for n, s in rows]


# -- schema, pragmas, migrations -----------------------------------------------------------------


def test_pragmas_are_wal_full_sync_and_foreign_keys(reg: Registry) -> None:
    assert reg.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reg.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert reg.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert reg.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with pytest.raises(sqlite3.IntegrityError):
        reg.conn.execute(
            "INSERT INTO tags (name, tag, adapter_version_id, updated_at, updated_by) "
            "VALUES ('x', 'y', 999, 'now', 'me')"
        )


@pytest.mark.parametrize("start", range(SCHEMA_VERSION))
def test_migrates_from_every_earlier_version(ws: Workspace, tmp_path: Path, start: int) -> None:
    fresh = tmp_path / "fresh.sqlite"
    conn = sqlite3.connect(fresh, isolation_level=None)
    migrate(conn, str(fresh))
    conn.close()

    old = sqlite3.connect(ws.registry_path, isolation_level=None)
    for step in MIGRATIONS[:start]:
        step(old)
    old.execute(f"PRAGMA user_version = {start}")
    if start >= 1:
        old.execute("INSERT INTO meta (key, value) VALUES ('probe', 'kept')")
    old.close()

    with Registry.open(ws) as reg:
        assert reg.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        if start >= 1:
            assert reg.core.query("SELECT value FROM meta WHERE key = 'probe'") == [
                {"value": "kept"}
            ]
    assert _schema(ws.registry_path) == _schema(fresh)


def test_refuses_a_newer_database_and_leaves_it_alone(ws: Workspace) -> None:
    Registry.open(ws).close()
    conn = sqlite3.connect(ws.registry_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError, match="newer than this appliance"):
        Registry.open(ws)
    conn = sqlite3.connect(ws.registry_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


def test_refuses_a_file_that_is_not_sqlite(ws: Workspace) -> None:
    ws.registry_path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match="rebuild-index"):
        Registry.open(ws)


# -- transactions --------------------------------------------------------------------------------


def _add_then_fail(reg: Registry, name: str) -> None:
    with reg.transaction():
        add_dataset(reg, name)
        raise RuntimeError("boom")


def test_failed_transaction_leaves_nothing(populated: Registry) -> None:
    audit_before = len(populated.audit_rows())
    with pytest.raises(RuntimeError, match="boom"):
        _add_then_fail(populated, "other")
    assert populated.datasets.versions("other") == []
    assert len(populated.audit_rows()) == audit_before


def test_nested_transaction_rolls_back_only_the_inner_block(populated: Registry) -> None:
    with populated.transaction():
        add_dataset(populated, "kept")
        with pytest.raises(RuntimeError, match="boom"):
            _add_then_fail(populated, "dropped")
    assert [d["name"] for d in populated.datasets.versions()] == ["docs", "kept"]
    assert populated.verify_audit().ok


# -- dataset versions (the contract) --------------------------------------------------------------


def test_dataset_versions_count_up_and_latest_skips_deleted(reg: Registry) -> None:
    assert add_dataset(reg) == 1
    assert add_dataset(reg, rows=20) == 2
    latest = reg.datasets.version("docs")
    assert (latest["version"], latest["rows"]) == (2, 20)
    assert latest["skipped_detail"] == [{"line": 3, "field": None, "problem": "empty line"}]
    assert latest["stats"] == {"tokens": 99}
    reg.datasets.delete_version("docs", 2)
    assert reg.datasets.version("docs")["version"] == 1
    assert reg.datasets.version("docs", 2, include_deleted=True)["deleted_at"] is not None
    with pytest.raises(NotFoundError, match="deleted"):
        reg.datasets.version("docs", 2)
    assert add_dataset(reg) == 3  # numbers are never reused
    with pytest.raises(NotFoundError, match=r"versions: 1, 3"):
        reg.datasets.version("docs", 9)
    with pytest.raises(NotFoundError, match=r"datasets: docs"):
        reg.datasets.version("nope")
    actions = [r["action"] for r in reg.audit_rows(action="dataset")]
    assert actions == ["dataset.import"] * 2 + ["dataset.delete", "dataset.import"]


def test_unknown_dataset_field_is_refused(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="colour"):
        reg.datasets.add_version("docs", colour="red")


# -- runs ----------------------------------------------------------------------------------------


def test_run_lifecycle_and_meta_file(populated: Registry) -> None:
    run_id = populated.runs.add(base_model="base", dataset="docs", config={"lr": 1e-4}, seed=5)
    run = populated.runs.get(run_id)
    assert (run["state"], run["base_model"], run["dataset"], run["seed"]) == (
        "queued",
        "base",
        "docs",
        5,
    )
    running = populated.runs.update(run_id, state="running", pid=99)
    assert running["pid"] == 99
    assert running["started_at"] is not None
    failed = populated.runs.update(run_id, state="failed", failure_reason="out of memory")
    assert failed["failure_reason"] == "out of memory"
    assert failed["pid"] is None
    populated.runs.update(run_id, state="running")  # resume
    populated.runs.update(run_id, state="finished")
    with pytest.raises(RegistryError, match="cannot become running"):
        populated.runs.update(run_id, state="running")
    kind, record = read_meta(populated.ws.home / run["path"])
    assert kind == "run"
    assert record["state"] == "finished"
    assert record["config"] == {"lr": 1e-4}
    assert [r["id"] for r in populated.runs.all("finished")] == [run_id]
    with pytest.raises(NotFoundError):
        populated.runs.get("run-missing")


def test_run_needs_a_known_base_model(reg: Registry) -> None:
    with pytest.raises(NotFoundError, match="no base model named 'ghost'"):
        reg.runs.add(base_model="ghost", config={})


# -- adapter versions and tags -------------------------------------------------------------------


def test_adapter_versions_count_per_name_and_bare_name_is_latest(populated: Registry) -> None:
    assert add_adapter(populated, "a")[1] == 1
    assert add_adapter(populated, "a")[1] == 2
    assert add_adapter(populated, "b")[1] == 1
    assert populated.adapters.version("a")["version"] == 2
    assert populated.adapters.version("a@1")["ref"] == "a@1"
    row = populated.adapters.version("a@2")
    assert row["path"] == "adapters/a/2"
    assert (populated.ws.home / "adapters/a/2/adapter.enc").is_file()
    assert read_meta(populated.ws.home / "adapters/a/2")[1]["base_model"] == "base"
    assert list(populated.ws.tmp_dir.iterdir()) == []
    with pytest.raises(NotFoundError, match=r"versions of a: 1, 2"):
        populated.adapters.version("a@3")
    with pytest.raises(UsageError):
        populated.adapters.version("a@")


def test_adapter_registration_of_an_unknown_run_moves_nothing(populated: Registry) -> None:
    staged = populated.ws.tmp_dir / "staged"
    staged.mkdir()
    (staged / "w").write_bytes(b"x")
    with pytest.raises(NotFoundError):
        adapter_folders.place(populated, "a", staged, run_id="run-missing")
    assert (staged / "w").read_bytes() == b"x"
    assert not (populated.ws.adapters_dir / "a").exists()
    assert populated.adapters.versions() == []


def test_failed_adapter_registration_moves_the_folder_back(
    populated: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_adapter(populated, "b")  # a name with a version already: its folder stays
    staged = populated.ws.tmp_dir / "staged"
    for name in ("a", "b"):
        staged.mkdir()
        (staged / "w").write_bytes(b"x")

        def fail(folder: Path, *args: object) -> None:
            # The folder was moved in: the failure comes after the move, inside the transaction.
            assert (folder / "w").is_file()
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(adapter_folders, "write_meta", fail)
            with pytest.raises(OSError, match="No space left"):
                adapter_folders.place(populated, name, staged, run_id=None)
        assert sorted(p.name for p in staged.iterdir()) == ["w"]
        shutil.rmtree(staged)
    assert not (populated.ws.adapters_dir / "a").exists()
    assert sorted(p.name for p in (populated.ws.adapters_dir / "b").iterdir()) == ["1"]
    assert [r["ref"] for r in populated.adapters.versions()] == ["b@1"]


def test_tags_move_atomically_between_versions(populated: Registry) -> None:
    add_adapter(populated, "a")
    add_adapter(populated, "a")
    assert populated.tags.set("a@1", "production")["previous"] is None
    assert populated.adapters.version("a@production")["version"] == 1
    moved = populated.tags.set("a@2", "production")
    assert moved == {"ref": "a@2", "tag": "production", "previous": 1}
    assert populated.adapters.version("a@production")["version"] == 2
    assert populated.adapters.version("a@1")["tags"] == []
    assert populated.tags.all("a") == [
        {
            "name": "a",
            "tag": "production",
            "version": 2,
            "updated_at": populated.tags.all("a")[0]["updated_at"],
            "updated_by": populated.tags.all("a")[0]["updated_by"],
        }
    ]
    with pytest.raises(UsageError, match="invalid tag"):
        populated.tags.set("a@1", "7")
    with pytest.raises(NotFoundError):
        populated.tags.set("a@9", "staging")
    populated.tags.remove("a", "production")
    with pytest.raises(NotFoundError, match=r"a@production does not exist \(versions of a: 1, 2\)"):
        populated.adapters.version("a@production")
    tag_rows = populated.audit_rows(action="adapter.tag")
    assert [r["details"]["previous"] for r in tag_rows] == [None, 1]


# -- lineage and exports -------------------------------------------------------------------------


def test_adapter_lineage_has_run_base_dataset_config_seed_libs_metrics(
    populated: Registry, tmp_path: Path
) -> None:
    run_id, _ = add_adapter(populated, "a", eval_loss=0.75)
    out = tmp_path / "serve" / "a-merged.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"merged")
    populated.exports.add("a@1", format="hf", path=out, details={"dtype": "bf16"})
    lineage = populated.adapters.lineage("a")
    assert lineage["run"] is not None
    assert lineage["dataset"] is not None
    assert lineage["run"]["id"] == run_id
    assert lineage["run"]["state"] == "finished"
    assert lineage["base_model"] == {
        "name": "base",
        "sha256": "ab" * 32,
        "architecture": "LlamaForCausalLM",
        "parameters": 1000,
    }
    assert lineage["dataset"]["name"] == "docs"
    assert lineage["dataset"]["version"] == 1
    assert lineage["dataset"]["sha256"] == "cd" * 32
    assert lineage["config"] == {"lora_r": 8, "lr": 2e-4, "seed": 3}
    assert lineage["seed"] == 3
    assert lineage["lib_versions"]["peft"] == "0.21.2"
    assert lineage["metrics"]["eval_loss"] == 0.75
    assert lineage["exports"][0]["path"] == str(out)  # absolute: exports lie outside
    json.dumps(lineage)  # scripts get it as JSON


def test_every_adapter_made_from_a_dataset_or_base_model(populated: Registry) -> None:
    add_fake_model(populated, "other-base")
    add_dataset(populated)  # docs@2
    add_adapter(populated, "a", dataset_version=1)
    add_adapter(populated, "b", dataset_version=2)
    add_adapter(populated, "c", base="other-base", dataset=None)
    assert [a["ref"] for a in populated.adapters.from_dataset("docs")] == ["a@1", "b@1"]
    assert [a["ref"] for a in populated.adapters.from_dataset("docs", 2)] == ["b@1"]
    assert [a["ref"] for a in populated.adapters.from_base_model("base")] == ["a@1", "b@1"]
    assert [a["ref"] for a in populated.adapters.from_base_model("other-base")] == ["c@1"]
    populated.datasets.delete_version("docs", 1)
    dataset = populated.adapters.lineage("a@1")["dataset"]
    assert dataset is not None
    assert dataset["deleted_at"] is not None


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_readers_see_only_committed_states(populated: Registry) -> None:
    ws = populated.ws
    stop = threading.Event()
    errors: list[str] = []
    seen: list[int] = []

    def reader() -> None:
        with Registry.open(ws) as mine:
            last = 0
            while True:
                # Checked before the read, so the last read starts after the final commit.
                done = stop.is_set()
                try:
                    rows = mine.adapters.versions("a")
                    versions = [r["version"] for r in rows]
                    if versions != list(range(1, len(versions) + 1)):
                        errors.append(f"gap in versions: {versions}")
                    if any(r["run_state"] != "finished" for r in rows):
                        errors.append("an adapter whose run is not finished was visible")
                    if len(versions) < last:
                        errors.append("the count went backwards")
                    last = len(versions)
                except Exception as exc:  # surfaces "database is locked" and the like
                    errors.append(repr(exc))
                if done:
                    break
            seen.append(last)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        with Registry.open(ws) as writer:
            for _ in range(30):
                # One transaction per adapter: run and adapter appear together or not at all.
                with writer.transaction():
                    add_adapter(writer, "a")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert seen == [30, 30, 30]


def _write_bad_tag(reg: Registry) -> None:
    with reg.transaction():
        add_dataset(reg, "lost")
        reg.conn.execute(
            "INSERT INTO tags (name, tag, adapter_version_id, updated_at, updated_by) "
            "VALUES ('x', 'y', 999, 'now', 'me')"
        )


def test_sqlite_failure_inside_a_transaction_is_a_registry_error(populated: Registry) -> None:
    with pytest.raises(
        RegistryError, match=r"refused the change .*FOREIGN KEY.*nothing was written"
    ):
        _write_bad_tag(populated)
    assert populated.datasets.versions("lost") == []


def _corrupt_table(path: Path, table: str) -> None:
    """Give the root page of ``table`` an invalid b-tree page type, as a bad sector might."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
        page = root.fetchone()[0]
    finally:
        conn.close()
    data = bytearray(path.read_bytes())
    data[(page - 1) * page_size] = 0xFF  # valid types are 2, 5, 10 and 13
    path.write_bytes(bytes(data))


def test_a_damaged_registry_is_called_damaged_not_a_full_disk(ws: Workspace) -> None:
    with Registry.open(ws) as reg:
        add_dataset(reg, "before")
    _corrupt_table(ws.registry_path, "audit")
    with Registry.open(ws) as reg, pytest.raises(RegistryError) as info:
        add_dataset(reg, "after")
    message = str(info.value)
    assert "is damaged (database disk image is malformed); nothing was written" in message
    assert "'appliance verify'" in message
    assert "disk space" not in message


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (13, "the disk holding the registry .* is full"),  # SQLITE_FULL
        (8, "is read-only .* needs a workspace you can write to"),  # SQLITE_READONLY
        (5, "is busy .* try again in a moment"),  # SQLITE_BUSY
        (10 | (4 << 8), "could not be read or written .* check the disk"),  # SQLITE_IOERR_WRITE
        (26, "is damaged"),  # SQLITE_NOTADB
        (1, r"refused the change \(boom\); nothing was written$"),  # SQLITE_ERROR
    ],
)
def test_each_sqlite_failure_gets_its_own_advice(code: int, advice: str) -> None:
    from appliance.registry.failures import change_refused

    exc = sqlite3.OperationalError("boom")
    exc.sqlite_errorcode = code
    message = str(change_refused(exc, Path("/ws/registry.sqlite")))
    assert re.search(advice, message), message
    assert "nothing was written" in message


@pytest.mark.parametrize(
    "text",
    [
        "legal@99999999999999999999999",
        f"legal@{2**63}",
        "legal@0",
        "legal@²",  # str.isdigit says yes, int() says no
        "legal@٣",  # an Arabic-Indic three: a digit, but not a version number
        "legal@-1",
        "legal@1.5",
        "legal@",
        "le/gal@1",
        "../legal",
        "a" * 101,
    ],
)
def test_refs_out_of_range_or_malformed_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match=r"invalid (adapter|adapter name)"):
        parse_ref(text)


def test_the_largest_version_sqlite_holds_parses() -> None:
    assert parse_ref(f"legal@{2**63 - 1}") == Ref("legal", version=2**63 - 1)
