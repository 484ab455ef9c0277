"""The registry's connection core: the SQLite connection, transactions, row codec and audit log."""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlite_utils

from appliance.errors import IntegrityError, PassphraseError, RegistryError
from appliance.registry import audit as audit_chain
from appliance.registry import failures
from appliance.registry.failures import RegistryReadOnlyError, explain
from appliance.registry.refs import dumps, loads, now, os_user
from appliance.registry.schema import SCHEMA_VERSION, migrate, user_version
from appliance.workspace import Workspace, read_only_reason

BUSY_TIMEOUT_MS = 30_000
"""How long a statement waits for another process's write transaction before failing."""

JSON_COLUMNS: dict[str, tuple[str, ...]] = {
    "base_models": ("manifest",),
    "dataset_versions": ("skipped_detail", "stats"),
    "runs": ("config",),
    "adapter_versions": ("metrics", "lib_versions"),
    "exports": ("details",),
    "audit": ("details",),
    "evaluations": ("metrics", "base_metrics", "settings", "lib_versions"),
}
BOOL_COLUMNS: dict[str, tuple[str, ...]] = {
    "base_models": ("linked", "has_chat_template"),
    "audit": ("keyed",),
}


class Core:
    """The connection every table group of :class:`~appliance.registry.Registry` shares.

    It holds what the groups need and nothing else: the workspace, the SQLite connection, the
    write transaction (with its nesting depth) and the audit chain that every change appends
    to inside that transaction. A group is handed the core (and the sibling groups it reads),
    never the registry, so what each group depends on is written in its constructor.
    """

    def __init__(
        self,
        ws: Workspace,
        conn: sqlite3.Connection,
        audit_key: bytes | None,
        *,
        path: Path | None = None,
        readonly: bool = False,
    ) -> None:
        self.ws = ws
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.path = path or ws.registry_path
        """The database file (the workspace's registry, or a rebuild's new file beside it)."""
        self.readonly = readonly
        self.audit_key = audit_key
        """The key of the keyed audit chain, if the registry was opened with one."""
        self._depth = 0
        self._chain_checked = False

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested blocks become savepoints of the outer one.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so two writers queue instead of
        failing halfway with "database is locked" when a read would have to become a write.
        """
        if self.readonly:
            raise RegistryError(
                f"the registry {self.path} was opened read-only for a command that only reads, "
                "yet a change was attempted; please report this"
            )
        if self._depth:
            self._depth += 1
            try:
                with self.db.atomic():
                    yield
            finally:
                self._depth -= 1
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise failures.change_refused(exc, self.path) from None
        self._depth = 1
        try:
            yield
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # A damaged file, a full disk, a lock held past the busy timeout, a constraint we
            # did not foresee: each has its own advice.
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):  # a damaged file may refuse the rollback too
                    self.conn.execute("ROLLBACK")
            raise failures.change_refused(exc, self.path) from exc
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    # -- rows ----------------------------------------------------------------------------------

    def row(self, table: str, row: Mapping[str, Any] | None) -> dict[str, Any]:
        """A stored row with its JSON and boolean columns decoded."""
        out = dict(row or {})
        for column in JSON_COLUMNS.get(table, ()):
            if column in out:
                out[column] = loads(out[column])
        for column in BOOL_COLUMNS.get(table, ()):
            if column in out and out[column] is not None:
                out[column] = bool(out[column])
        return out

    def encode(self, table: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``fields`` as stored: JSON columns as text, booleans as 0/1."""
        out = dict(fields)
        for column in JSON_COLUMNS.get(table, ()):
            if column in out and out[column] is not None and not isinstance(out[column], str):
                out[column] = dumps(out[column])
        for column in BOOL_COLUMNS.get(table, ()):
            if column in out and out[column] is not None:
                out[column] = int(bool(out[column]))
        return out

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """The rows of one query, as plain dicts (columns not decoded)."""
        return list(self.db.query(sql, params))

    def insert(self, table: str, fields: Mapping[str, Any]) -> int:
        """Insert one row (inside the current transaction) and return its rowid."""
        cursor = self.db.table(table).insert(self.encode(table, fields)).last_rowid
        if cursor is None:
            raise RegistryError(f"inserting into {table} returned no row id")
        return int(cursor)

    @staticmethod
    def stamp() -> dict[str, str]:
        """``created_at`` and ``created_by`` for a new row."""
        return {"created_at": now(), "created_by": os_user()}

    def next_version(self, table: str, name: str) -> int:
        """The next version number of ``name`` in a versioned table (call inside the write
        transaction, so nobody else takes the same number)."""
        # Deleted versions count too: a number is never reused for different content.
        row = self.conn.execute(
            f"SELECT COALESCE(MAX(version), 0) FROM {table} WHERE name = ?",  # noqa: S608
            (name,),
        ).fetchone()
        return int(row[0]) + 1

    # -- audit ---------------------------------------------------------------------------------

    def audit_keyed(self) -> bool:
        """Whether the chain has become keyed (then writing needs the key)."""
        row = self.conn.execute("SELECT 1 FROM audit WHERE keyed = 1 LIMIT 1").fetchone()
        return row is not None

    def audit(self, action: str, obj: str, details: Mapping[str, Any]) -> None:
        """Append one chained audit row (inside the current transaction, if one is open).

        Raises:
            PassphraseError: the chain is keyed and this registry was opened without the key.
            IntegrityError: the chain is broken and nobody acknowledged it
                (:meth:`Registry.acknowledge_audit_break`): a row appended to it would prove
                nothing.
        """
        if self.audit_key is None and (self.audit_keyed() or self.ws.has_key_slots()):
            raise PassphraseError(
                "this command needs the workspace passphrase (the audit log is keyed); give it "
                "with --passphrase-file or APPLIANCE_PASSPHRASE"
            )
        with self.transaction():
            if action != audit_chain.ACKNOWLEDGE:
                self._refuse_broken_chain(action)
            self._append_audit(action, obj, details)

    def _append_audit(self, action: str, obj: str, details: Mapping[str, Any]) -> None:
        last = self.conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (1, audit_chain.GENESIS) if last is None else (last[0] + 1, last[1])
        row: dict[str, Any] = {
            "seq": seq,
            "time": now(),
            "user": os_user(),
            "action": action,
            "object": obj,
            "details": dumps(dict(details)),
            "keyed": int(self.audit_key is not None),
        }
        row["prev_hash"] = prev
        row["hash"] = audit_chain.row_hash(row, prev, self.audit_key)
        self.db.table("audit").insert(row)

    def _refuse_broken_chain(self, action: str) -> None:
        """Check the whole chain before this registry's first append (later appends extend a
        chain this process has seen intact)."""
        if self._chain_checked:
            return
        empty = self.conn.execute("SELECT 1 FROM audit LIMIT 1").fetchone() is None
        if not empty:
            report = self.verify_audit()
            problems = report.problems
            if action == "vault.create" and report.keyed_rows == 0:
                # The one moment a vault exists before its first keyed row: this one.
                problems = [p for p in problems if "no audit row is keyed" not in p[1]]
            if problems:
                seq, what = problems[0]
                raise IntegrityError(
                    f"the audit log is broken (row #{seq}: {what}; {len(problems)} problem(s) in "
                    "all); nothing was written, because a row added to a broken log proves "
                    "nothing. Run 'appliance audit' to see the break, then restore "
                    "registry.sqlite from backup, or record that you have seen it with "
                    "'appliance audit --acknowledge'"
                )
        self._chain_checked = True

    def verify_audit(self) -> audit_chain.ChainReport:
        """Check the whole chain.

        Raises:
            PassphraseError: keyed rows exist and this registry has no key to check them.
        """
        # With a vault the key is required even when no keyed row is left: a chain stripped of
        # its keyed rows and rewritten unkeyed must not pass as "nothing to check".
        vaulted = self.ws.has_key_slots()
        if self.audit_key is None and (vaulted or self.audit_keyed()):
            raise PassphraseError(
                "the audit log is keyed; give the workspace passphrase to verify it "
                "(--passphrase-file or APPLIANCE_PASSPHRASE)"
            )
        rows = self.conn.execute(
            "SELECT seq, time, user, action, object, details, keyed, prev_hash, hash "
            "FROM audit ORDER BY seq"
        )
        names = [d[0] for d in rows.description]
        report = audit_chain.verify_chain(
            (dict(zip(names, r, strict=True)) for r in rows), self.audit_key
        )
        if vaulted and report.keyed_rows == 0:
            # Creating the vault writes the first keyed row, so none at all means a rewrite.
            report.problems.append(
                (
                    max(report.rows, 1),
                    "the workspace has a vault but no audit row is keyed (the log was rewritten)",
                )
            )
        return report


def open_core(ws: Workspace, audit_key: bytes | None, *, readonly: bool, path: Path | None) -> Core:
    """Connect to (creating or upgrading as needed) the registry file; see
    :meth:`appliance.registry.Registry.open`."""
    path = path or ws.registry_path
    if readonly:
        conn = _connect_readonly(path)
        if conn is not None:
            return Core(ws, conn, audit_key, path=path, readonly=True)
    conn = connect(path)
    try:
        migrate(conn, str(path))
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise explain(exc, path, "upgrading its schema") from None
    except BaseException:
        conn.close()
        raise
    return Core(ws, conn, audit_key, path=path)


def connect(path: Path) -> sqlite3.Connection:
    """A writable autocommit connection with the registry's pragmas (WAL, FULL sync, foreign
    keys).

    Raises:
        RegistryError: classified by :func:`~appliance.registry.failures.explain`: a damaged
            file, a read-only workspace, a folder that cannot be opened.
    """
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise explain(exc, path, "opening it") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"journal mode is {mode}, WAL is needed")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise explain(exc, path, "opening it") from None
    with suppress(OSError):  # another user's file on a shared workstation: leave it
        path.chmod(0o600)
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection, or None when the registry must first be created or upgraded
    (then the caller opens it writable, which fails clearly on a read-only workspace).

    On a read-only mount SQLite cannot create the ``-shm`` file a WAL database needs, so the
    file is then opened ``immutable`` (nobody can change it there), unless a ``-wal`` file
    holds changes that only a writable open could read.
    """
    if not path.exists():
        if read_only_reason(path.parent) is not None:
            raise RegistryReadOnlyError(
                f"the workspace {path.parent} is read-only and has no registry yet; open it "
                "once where it is writable"
            )
        return None
    base = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    conn = _try_readonly(base, path)
    if conn is None:
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise RegistryReadOnlyError(
                f"the workspace {path.parent} is read-only and its registry has changes in "
                f"{wal.name} that can only be read once the workspace is writable again"
            )
        conn = _try_readonly(f"{base}&immutable=1", path, final=True)
    assert conn is not None
    try:
        version = user_version(conn)
        if version > SCHEMA_VERSION:
            migrate(conn, str(path))  # raises "newer than this appliance", writing nothing
        if version != SCHEMA_VERSION:
            conn.close()
            if read_only_reason(path.parent) is not None:
                raise RegistryReadOnlyError(
                    f"the registry {path} has schema version {version}; this appliance must "
                    f"upgrade it to {SCHEMA_VERSION} once, which needs a writable workspace"
                )
            return None
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise explain(exc, path, "opening it") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _try_readonly(uri: str, path: Path, *, final: bool = False) -> sqlite3.Connection | None:
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
        )  # fmt: skip
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA user_version").fetchone()  # opens the file for real
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        cant_open = str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_CANTOPEN")
        if cant_open and not final and read_only_reason(path.parent) is not None:
            return None
        raise explain(exc, path, "opening it") from None
    return conn
