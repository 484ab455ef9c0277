"""The registry's connection, transactions and audit log (the base of :class:`Registry`)."""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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


class RegistryBase:
    """Connection handling shared by every part of :class:`~appliance.registry.Registry`."""

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
        self._audit_key = audit_key
        self._depth = 0
        self._chain_checked = False

    @property
    def audit_key(self) -> bytes | None:
        """The key of the keyed audit chain this registry was opened with, if any."""
        return self._audit_key

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        ws: Workspace,
        audit_key: bytes | None = None,
        *,
        readonly: bool = False,
        path: Path | None = None,
    ) -> Self:
        """Open (creating or upgrading as needed) the registry of ``ws``.

        Args:
            ws: the workspace.
            audit_key: key of the keyed audit chain (derived from the vault's master key);
                None before the workspace has a vault, or for commands that only read.
            readonly: open it read-only (``mode=ro``): for commands that only read, so they
                work on a read-only workspace and can never change the file. A registry that
                still has to be created or upgraded is opened writable once for that.
            path: another database file than the workspace's registry (a rebuild's new one).

        Raises:
            RegistryError: the file is damaged, from a newer version, or cannot be opened;
                the message says which (:func:`appliance.registry.failures.explain`).
        """
        path = path or ws.registry_path
        if readonly:
            conn = _connect_readonly(path)
            if conn is not None:
                return cls(ws, conn, audit_key, path=path, readonly=True)
        conn = connect(path)
        try:
            migrate(conn, str(path))
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise explain(exc, path, "upgrading its schema") from None
        except BaseException:
            conn.close()
            raise
        return cls(ws, conn, audit_key, path=path)

    def close(self) -> None:
        """Close the connection (uncommitted work is rolled back)."""
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if isinstance(exc, sqlite3.Error):
            # Whatever read or wrote the registry inside the block: one classified message
            # (damaged, read-only, full, busy) instead of an internal error.
            raise explain(exc, self.path) from exc

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

    # -- helpers for the parts ------------------------------------------------------------------

    def _row(self, table: str, row: Mapping[str, Any] | None) -> dict[str, Any]:
        """A stored row with its JSON and boolean columns decoded."""
        out = dict(row or {})
        for column in JSON_COLUMNS.get(table, ()):
            if column in out:
                out[column] = loads(out[column])
        for column in BOOL_COLUMNS.get(table, ()):
            if column in out and out[column] is not None:
                out[column] = bool(out[column])
        return out

    def _encode(self, table: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(fields)
        for column in JSON_COLUMNS.get(table, ()):
            if column in out and out[column] is not None and not isinstance(out[column], str):
                out[column] = dumps(out[column])
        for column in BOOL_COLUMNS.get(table, ()):
            if column in out and out[column] is not None:
                out[column] = int(bool(out[column]))
        return out

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    def _insert(self, table: str, fields: Mapping[str, Any]) -> int:
        """Insert one row (inside the current transaction) and return its rowid."""
        cursor = self.db.table(table).insert(self._encode(table, fields)).last_rowid
        if cursor is None:
            raise RegistryError(f"inserting into {table} returned no row id")
        return int(cursor)

    @staticmethod
    def _stamp() -> dict[str, str]:
        return {"created_at": now(), "created_by": os_user()}

    # -- audit ---------------------------------------------------------------------------------

    def audit_keyed(self) -> bool:
        """Whether the chain has become keyed (then writing needs the key)."""
        row = self.conn.execute("SELECT 1 FROM audit WHERE keyed = 1 LIMIT 1").fetchone()
        return row is not None

    def audit(self, action: str, obj: str, details: Mapping[str, Any]) -> None:
        """Append one chained audit row (inside the current transaction, if one is open).

        Raises:
            PassphraseError: the chain is keyed and this registry was opened without the key.
            IntegrityError: the chain is broken and nobody acknowledged it (see
                :meth:`acknowledge_audit_break`): a row appended to it would prove nothing.
        """
        if self._audit_key is None and (self.audit_keyed() or _has_vault(self.ws)):
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
            "keyed": int(self._audit_key is not None),
        }
        row["prev_hash"] = prev
        row["hash"] = audit_chain.row_hash(row, prev, self._audit_key)
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

    def acknowledge_audit_break(self) -> list[tuple[int, str]]:
        """Record, in the log itself, that a person has seen its current problems.

        Writers refuse a broken chain until then; afterwards the listed problems are reported
        as acknowledged and writing resumes. The row is keyed like any other, so only somebody
        with a passphrase can acknowledge.

        Returns:
            The problems acknowledged (empty: the chain was intact, nothing was written).
        """
        with self.transaction():
            problems = self.verify_audit().problems
            if problems:
                self.audit(
                    audit_chain.ACKNOWLEDGE,
                    "audit",
                    {"problems": [[seq, what] for seq, what in problems]},
                )
        return problems

    def audit_rows(
        self, *, limit: int | None = None, action: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit rows, oldest first (the last ``limit`` when given)."""
        if action:
            rows = self._query(
                "SELECT * FROM audit WHERE action = ? OR action LIKE ? ORDER BY seq",
                (action, f"{action}.%"),
            )
        else:
            rows = self._query("SELECT * FROM audit ORDER BY seq")
        if limit is not None:
            rows = rows[-limit:] if limit > 0 else []
        return [self._row("audit", row) for row in rows]

    def verify_audit(self) -> audit_chain.ChainReport:
        """Check the whole chain.

        Raises:
            PassphraseError: keyed rows exist and this registry has no key to check them.
        """
        # With a vault the key is required even when no keyed row is left: a chain stripped of
        # its keyed rows and rewritten unkeyed must not pass as "nothing to check".
        vaulted = _has_vault(self.ws)
        if self._audit_key is None and (vaulted or self.audit_keyed()):
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
            (dict(zip(names, r, strict=True)) for r in rows), self._audit_key
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

    # -- health --------------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """SQLite's ``integrity_check`` and ``foreign_key_check``: empty when all is well."""
        problems = [str(r[0]) for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        for table, rowid, parent, _ in self.conn.execute("PRAGMA foreign_key_check"):
            problems.append(f"{table} row {rowid} points at a missing {parent} row")
        return problems


def _has_vault(ws: Workspace) -> bool:
    from appliance.vault import has_vault

    return has_vault(ws)


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
