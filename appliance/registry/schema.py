"""Schema of the registry and its migrations.

The schema version lives in SQLite's ``PRAGMA user_version``. ``MIGRATIONS[i]`` takes a database
from version ``i`` to ``i + 1``; a migration is frozen SQL once released (never edit one, append
a new one), so every database, however old, reaches today's schema by the same steps. Each step
runs in its own transaction together with its ``user_version`` bump, so an interrupted upgrade
leaves the database at the last completed version.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable

from appliance.errors import RegistryError

RUN_STATES = ("queued", "running", "stopped", "failed", "finished")

_V1 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE base_models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL CHECK (format IN ('hf', 'gguf')),
    source TEXT NOT NULL,
    source_sha256 TEXT,
    linked INTEGER NOT NULL DEFAULT 0 CHECK (linked IN (0, 1)),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    manifest TEXT NOT NULL,
    architecture TEXT NOT NULL,
    model_type TEXT,
    parameters INTEGER NOT NULL,
    dtype TEXT,
    context_length INTEGER,
    vocab_size INTEGER,
    has_chat_template INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    deleted_at TEXT
);

CREATE TABLE dataset_versions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    object_id TEXT,
    path TEXT,
    sha256 TEXT,
    file_sha256 TEXT,
    kind TEXT,
    format TEXT,
    source_name TEXT,
    rows INTEGER,
    train_rows INTEGER,
    eval_rows INTEGER,
    duplicates_removed INTEGER,
    skipped_rows INTEGER,
    skipped_detail TEXT,
    chars INTEGER,
    eval_fraction REAL,
    seed INTEGER,
    stats TEXT,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    deleted_at TEXT,
    UNIQUE (name, version)
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'stopped', 'failed', 'finished')),
    pid INTEGER,
    base_model_id INTEGER REFERENCES base_models (id),
    dataset_version_id INTEGER REFERENCES dataset_versions (id),
    config TEXT NOT NULL,
    seed INTEGER,
    path TEXT,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    updated_at TEXT NOT NULL,
    failure_reason TEXT
);
CREATE INDEX runs_base_model ON runs (base_model_id);
CREATE INDEX runs_dataset_version ON runs (dataset_version_id);

CREATE TABLE adapter_versions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    run_id TEXT REFERENCES runs (id),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    lib_versions TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    deleted_at TEXT,
    UNIQUE (name, version)
);
CREATE INDEX adapter_versions_run ON adapter_versions (run_id);

CREATE TABLE tags (
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    adapter_version_id INTEGER NOT NULL REFERENCES adapter_versions (id),
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (name, tag)
);

CREATE TABLE exports (
    id INTEGER PRIMARY KEY,
    adapter_version_id INTEGER NOT NULL REFERENCES adapter_versions (id),
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    details TEXT NOT NULL,
    keyed INTEGER NOT NULL CHECK (keyed IN (0, 1)),
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- Append-only by construction; the hash chain catches whoever drops these triggers.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


# Version 2: evaluation results of adapter versions (lineage: which data scored them, how), and
# the golden set of each adapter name that gates its `production` tag.
_V2 = """
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    adapter_version_id INTEGER NOT NULL REFERENCES adapter_versions (id),
    adapter_sha256 TEXT NOT NULL,
    dataset_version_id INTEGER NOT NULL REFERENCES dataset_versions (id),
    dataset_sha256 TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'eval', 'all')),
    metrics TEXT NOT NULL,
    base_metrics TEXT,
    settings TEXT NOT NULL DEFAULT '{}',
    lib_versions TEXT NOT NULL DEFAULT '{}',
    seconds REAL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX evaluations_adapter ON evaluations (adapter_version_id);
CREATE INDEX evaluations_dataset ON evaluations (dataset_version_id);

CREATE TABLE golden_sets (
    name TEXT PRIMARY KEY,
    dataset_version_id INTEGER NOT NULL REFERENCES dataset_versions (id),
    metric TEXT NOT NULL CHECK (metric IN ('answer_loss', 'contains')),
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
"""


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    _run_script(conn, _V1)


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    _run_script(conn, _V2)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would commit the open transaction; run statement by statement instead.
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            conn.execute(buffer)
            buffer = ""
    if buffer.strip():
        raise RuntimeError(f"incomplete SQL statement in a migration: {buffer!r}")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1, _migrate_1_to_2]
"""``MIGRATIONS[i]`` upgrades a database from schema version ``i`` to ``i + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)


EXPECTED_TRIGGERS: dict[str, str] = {
    match["name"]: match[0].strip()
    for script in (_V1, _V2)
    for match in re.finditer(r"CREATE TRIGGER (?P<name>\w+) .*?END;", script, re.DOTALL)
}
"""The triggers today's schema must have, name to ``CREATE TRIGGER`` statement (every
migration's script is scanned; one that changes a trigger must update this mapping)."""


def _normal(sql: str) -> str:
    return " ".join(sql.replace(";", " ").split()).lower()


def trigger_problems(conn: sqlite3.Connection) -> list[str]:
    """Triggers of the schema that are missing or were changed (empty when all is well).

    The audit table's triggers make it append-only; whoever drops them can edit rows, which
    the hash chain then catches, but a dropped trigger is worth reporting on its own.
    """
    found = {
        name: sql or ""
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    }
    problems = []
    for name, sql in EXPECTED_TRIGGERS.items():
        if name not in found:
            problems.append(f"trigger {name} is missing (it was dropped)")
        elif _normal(found[name]) != _normal(sql):
            problems.append(f"trigger {name} was changed from the schema's definition")
    return problems


def restore_triggers(conn: sqlite3.Connection) -> list[str]:
    """Re-create missing or changed schema triggers (inside the caller's transaction).

    Returns:
        One line per trigger restored.
    """
    restored = []
    for problem in trigger_problems(conn):
        name = problem.split()[1]
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        conn.execute(EXPECTED_TRIGGERS[name])
        restored.append(f"restored trigger {name} ({problem.split(' ', 2)[2]})")
    return restored


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the database (0 for a new, empty one)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the database on ``conn`` (an autocommit connection) up to ``target``.

    Returns:
        The version the database had before.

    Raises:
        RegistryError: the database is from a newer appliance, or a migration failed.
    """
    start = user_version(conn)
    if start > SCHEMA_VERSION:
        raise RegistryError(
            f"the registry {path} has schema version {start}, newer than this appliance "
            f"understands ({SCHEMA_VERSION}); upgrade the appliance, it was not modified"
        )
    for version in range(start, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            if user_version(conn) != version:
                conn.execute("ROLLBACK")
                continue
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise RegistryError(
                f"upgrading the registry {path} from schema {version} to {version + 1} failed "
                f"({exc}); it was left at version {version}; restore it from backup or report this"
            ) from None
    return start
