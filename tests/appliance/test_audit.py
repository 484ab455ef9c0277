"""The audit log: append-only, chained, keyed; edits, deletions and swaps are detected."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from appliance.errors import IntegrityError, PassphraseError
from appliance.registry import Registry
from appliance.registry.audit import row_hash
from appliance.verify import verify_workspace
from appliance.workspace import Workspace
from tests.helpers.cli import CliRunner
from tests.helpers.registry_data import add_adapter, add_dataset, add_fake_model

KEY = b"k" * 32


@pytest.fixture
def reg(ws: Workspace) -> Iterator[Registry]:
    with Registry.open(ws) as registry:
        for i in range(1, 6):
            registry.audit("test.write", f"object-{i}", {"i": i})
        yield registry


def _tamper(ws: Workspace, *statements: str) -> None:
    """What someone with file access does: drop the append-only triggers, then edit."""
    conn = sqlite3.connect(ws.registry_path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    for sql in statements:
        conn.execute(sql)
    conn.close()


def test_rows_carry_time_user_action_object_details(reg: Registry) -> None:
    rows = reg.audit_rows()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[1]["details"] == {"i": 2}
    assert rows[1]["object"] == "object-2"
    assert rows[1]["user"]
    assert rows[1]["time"].endswith("+00:00")
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert reg.verify_audit().ok
    assert [r["seq"] for r in reg.audit_rows(limit=2)] == [4, 5]


def test_audit_table_refuses_update_and_delete(reg: Registry) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        reg.conn.execute("UPDATE audit SET details = '{}' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        reg.conn.execute("DELETE FROM audit WHERE seq = 2")


def test_edited_details_are_detected_at_that_row(reg: Registry) -> None:
    _tamper(reg.ws, """UPDATE audit SET details = '{"i":99}' WHERE seq = 3""")
    report = reg.verify_audit()
    assert report.first_bad == 3
    assert "edited" in report.problems[0][1]


def test_deleted_row_is_detected_at_the_next_row(reg: Registry) -> None:
    _tamper(reg.ws, "DELETE FROM audit WHERE seq = 2")
    report = reg.verify_audit()
    assert report.first_bad == 3
    assert "missing" in report.problems[0][1] or "does not follow" in report.problems[0][1]


def test_deleting_the_first_row_is_detected(reg: Registry) -> None:
    _tamper(reg.ws, "DELETE FROM audit WHERE seq = 1")
    assert reg.verify_audit().first_bad == 2


def test_swapped_rows_are_detected(reg: Registry) -> None:
    cols = "time, user, action, object, details, keyed, prev_hash, hash"
    _tamper(
        reg.ws,
        f"CREATE TEMP TABLE a2 AS SELECT {cols} FROM audit WHERE seq = 2",
        f"CREATE TEMP TABLE a3 AS SELECT {cols} FROM audit WHERE seq = 3",
        "DELETE FROM audit WHERE seq IN (2, 3)",
        f"INSERT INTO audit (seq, {cols}) SELECT 2, {cols} FROM a3",
        f"INSERT INTO audit (seq, {cols}) SELECT 3, {cols} FROM a2",
    )
    report = reg.verify_audit()
    assert report.first_bad == 2
    assert not report.ok


def test_keyed_chain_needs_the_key_and_rejects_a_forged_row(ws: Workspace) -> None:
    with Registry.open(ws) as reg:
        reg.audit("before.vault", "x", {})
    with Registry.open(ws, audit_key=KEY) as reg:
        reg.audit("vault.create", "ws", {})
        reg.audit("model.import", "m", {"n": 1})
        report = reg.verify_audit()
        assert report.ok
        assert report.keyed_rows == 2
    with Registry.open(ws) as reg:
        with pytest.raises(PassphraseError, match="passphrase"):
            reg.audit("model.import", "m2", {})
        with pytest.raises(PassphraseError):
            reg.verify_audit()
    with Registry.open(ws, audit_key=b"wrong" * 8) as reg:
        assert reg.verify_audit().first_bad == 2

    # A forger without the key edits row 3 and recomputes an unkeyed hash: detected.
    conn = sqlite3.connect(ws.registry_path)
    conn.row_factory = sqlite3.Row
    row = dict(conn.execute("SELECT * FROM audit WHERE seq = 3").fetchone())
    conn.close()
    row["details"] = '{"n":2}'
    forged = row_hash(row, row["prev_hash"], None)
    _tamper(ws, f"""UPDATE audit SET details = '{{"n":2}}', hash = '{forged}' WHERE seq = 3""")
    with Registry.open(ws, audit_key=KEY) as reg:
        assert reg.verify_audit().first_bad == 3


def test_unkeyed_row_after_keyed_rows_is_detected(ws: Workspace) -> None:
    with Registry.open(ws, audit_key=KEY) as reg:
        reg.audit("vault.create", "ws", {})
    # Appended by hand with a correct unkeyed hash, as a forger without the key would.
    conn = sqlite3.connect(ws.registry_path, isolation_level=None)
    prev = conn.execute("SELECT hash FROM audit WHERE seq = 1").fetchone()[0]
    row = {"seq": 2, "time": "t", "user": "u", "action": "a", "object": "o", "details": "{}"}
    row["keyed"] = 0
    digest = row_hash(row, prev, None)
    conn.execute("INSERT INTO audit VALUES (2, 't', 'u', 'a', 'o', '{}', 0, ?, ?)", (prev, digest))
    conn.close()
    with Registry.open(ws, audit_key=KEY) as reg:
        report = reg.verify_audit()
    assert report.first_bad == 2
    assert "unkeyed" in report.problems[0][1]


def test_cli_audit_lists_rows_and_fails_on_tampering(ws: Workspace, cli: CliRunner) -> None:
    with Registry.open(ws) as reg:
        for i in range(3):
            reg.audit("test.write", f"object-{i}", {"i": i})
    listed = cli("audit", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"object": "object-2"' in listed.stdout
    assert cli("audit").returncode == 0

    _tamper(ws, """UPDATE audit SET object = 'other' WHERE seq = 2""")
    broken = cli("audit")
    assert broken.returncode == 1
    assert broken.err_lines == [broken.err_lines[0]]
    assert broken.err_lines[0].startswith("error: ")
    assert "first bad row: #2" in broken.err_lines[0]


def test_vault_workspace_needs_the_key_even_after_keyed_rows_are_stripped(
    ws: Workspace,
) -> None:
    from appliance.vault.keyslots import SLOT_SUFFIX

    (ws.keys_dir / f"owner{SLOT_SUFFIX}").write_text("{}")  # has_vault() only looks for slots
    with Registry.open(ws, audit_key=KEY) as reg:
        reg.audit("vault.create", "owner", {})
        reg.audit("model.import", "m", {})
    # The forger deletes the keyed log and writes an unkeyed one that chains correctly.
    _tamper(ws, "DELETE FROM audit")
    conn = sqlite3.connect(ws.registry_path, isolation_level=None)
    row = {"seq": 1, "time": "t", "user": "u", "action": "a", "object": "o", "details": "{}"}
    row["keyed"] = 0
    conn.execute(
        "INSERT INTO audit VALUES (1, 't', 'u', 'a', 'o', '{}', 0, ?, ?)",
        ("0" * 64, row_hash(row, "0" * 64, None)),
    )
    conn.close()
    with Registry.open(ws) as reg:
        with pytest.raises(PassphraseError):
            reg.verify_audit()
        with pytest.raises(PassphraseError):
            reg.audit("more", "x", {})
    with Registry.open(ws, audit_key=KEY) as reg:
        report = reg.verify_audit()
    assert not report.ok
    assert "no audit row is keyed" in report.problems[0][1]
    # A writer with the key must not bless the rewritten log with a first keyed row.
    with (
        Registry.open(ws, audit_key=KEY) as reg,
        pytest.raises(IntegrityError, match="no audit row is keyed"),
    ):
        reg.audit("model.import", "m2", {})


def _rows(ws: Workspace) -> int:
    conn = sqlite3.connect(ws.registry_path)
    try:
        return int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
    finally:
        conn.close()


def test_writers_refuse_a_broken_chain_until_someone_acknowledges_it(reg: Registry) -> None:
    ws = reg.ws
    _tamper(ws, "UPDATE audit SET object = 'other' WHERE seq = 2")
    with Registry.open(ws) as writer:
        with pytest.raises(
            IntegrityError,
            match=r"audit log is broken \(row #2: .*edited.*nothing was written.*"
            r"appliance audit --acknowledge",
        ):
            writer.audit("test.write", "after", {})
        # Every writer, not only direct audit calls: the change and its row roll back together.
        with pytest.raises(IntegrityError, match="audit log is broken"):
            add_dataset(writer, "refused")
        assert writer.datasets.versions() == []
    assert _rows(ws) == 5

    with Registry.open(ws) as writer:
        seen = writer.acknowledge_audit_break()
        assert seen == [(2, "its content does not match its hash (it was edited)")]
        writer.audit("test.write", "after", {})
        report = writer.verify_audit()
        assert report.ok
        assert report.acknowledged == seen
        assert writer.acknowledge_audit_break() == []  # nothing new: nothing written
        assert writer.audit_rows()[-2]["action"] == "audit.acknowledge"

    # A break after the acknowledgement is a new one: reported, and writers stop again.
    conn = sqlite3.connect(ws.registry_path, isolation_level=None)
    conn.execute("UPDATE audit SET user = 'mallory' WHERE seq = 7")
    conn.close()
    with Registry.open(ws) as writer:
        assert writer.verify_audit().problems == [
            (7, "its content does not match its hash (it was edited)")
        ]
        with pytest.raises(IntegrityError, match="row #7"):
            writer.audit("test.write", "again", {})


def test_acknowledging_a_keyed_chain_needs_the_key(ws: Workspace) -> None:
    with Registry.open(ws, audit_key=KEY) as reg:
        reg.audit("vault.create", "ws", {})
        reg.audit("model.import", "m", {})
    _tamper(ws, """UPDATE audit SET object = 'n' WHERE seq = 2""")
    with Registry.open(ws) as reg, pytest.raises(PassphraseError):
        reg.acknowledge_audit_break()
    # A forged acknowledgement (unkeyed, by someone without the passphrase) acknowledges nothing.
    conn = sqlite3.connect(ws.registry_path, isolation_level=None)
    prev = conn.execute("SELECT hash FROM audit WHERE seq = 2").fetchone()[0]
    details = '{"problems":[[2,"its content does not match its hash (it was edited)"]]}'
    row = {"seq": 3, "time": "t", "user": "u", "action": "audit.acknowledge", "object": "audit"}
    row.update(details=details, keyed=0)
    conn.execute(
        "INSERT INTO audit VALUES (3, 't', 'u', 'audit.acknowledge', 'audit', ?, 0, ?, ?)",
        (details, prev, row_hash(row, prev, None)),
    )
    conn.close()
    with Registry.open(ws, audit_key=KEY) as reg:
        report = reg.verify_audit()
    assert report.acknowledged == []
    assert [seq for seq, _ in report.problems] == [2, 3]


def test_cli_audit_acknowledge_lets_commands_write_again(ws: Workspace, cli: CliRunner) -> None:
    with Registry.open(ws) as reg:
        add_fake_model(reg)
        add_adapter(reg, "a", dataset=None)
    _tamper(ws, "UPDATE audit SET details = '{}' WHERE seq = 1")
    refused = cli("adapter", "tag", "a@1", "staging")
    assert refused.returncode == 1
    assert refused.err_lines == [refused.err_lines[0]]
    assert "the audit log is broken (row #1" in refused.err_lines[0]
    assert "appliance audit --acknowledge" in refused.err_lines[0]
    acked = cli("audit", "--acknowledge")
    assert acked.returncode == 0, acked.stderr
    assert "acknowledged audit row 1: its content does not match its hash" in acked.stdout
    assert "1 acknowledged break(s), none since" in acked.stdout
    assert "│ ACK " in acked.stdout
    assert cli("audit").returncode == 0
    again = cli("audit", "--acknowledge")
    assert "there is nothing to acknowledge" in again.stdout
    tagged = cli("adapter", "tag", "a@1", "staging")
    assert tagged.returncode == 0, tagged.stderr


def test_dropped_or_changed_trigger_is_reported_and_restored(ws: Workspace) -> None:
    from appliance.registry.rebuild import rebuild_index
    from appliance.registry.schema import trigger_problems

    with Registry.open(ws) as reg:
        reg.audit("test.write", "x", {})
    conn = sqlite3.connect(ws.registry_path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DROP TRIGGER audit_no_update")
    # Same name, no teeth: as bad as a dropped one.
    conn.execute("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT 1; END")
    conn.close()
    with Registry.open(ws, readonly=True) as reg:
        findings = verify_workspace(ws, reg).findings
    assert any("trigger audit_no_delete is missing (it was dropped)" in f for f in findings)
    assert any("trigger audit_no_update was changed" in f for f in findings)

    actions = rebuild_index(ws)
    assert "restored trigger audit_no_delete (is missing (it was dropped))" in actions
    with Registry.open(ws) as reg:
        assert trigger_problems(reg.conn) == []
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            reg.conn.execute("UPDATE audit SET details = '{}' WHERE seq = 1")
        assert reg.audit_rows()[-1]["action"] == "registry.rebuild"
        assert verify_workspace(ws, reg).ok
