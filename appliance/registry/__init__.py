"""The SQLite registry: base models, dataset versions, runs, adapter versions, exports, tags, audit.

One file, ``HOME/registry.sqlite``, in WAL mode with ``synchronous=FULL`` and foreign keys on;
every write is one transaction, so a crash leaves the old or the new state. It is an index: the
model, run and adapter folders carry their own ``meta.json`` and ``appliance verify
--rebuild-index`` rebuilds the rows from them.

Typical use::

    with Registry.open(ws) as reg:
        version = adapter_folders.place(reg, "contracts", staging, run_id=run_id)
        reg.tags.set(f"contracts@{version}", "production")
        print(reg.adapters.lineage("contracts@production"))
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from appliance.registry import audit as audit_chain
from appliance.registry.adapter_versions import AdapterVersions
from appliance.registry.audit import ChainReport
from appliance.registry.base_models import BaseModels
from appliance.registry.core import Core, open_core
from appliance.registry.dataset_versions import DatasetVersions
from appliance.registry.evaluations import Evaluations
from appliance.registry.exports import Exports
from appliance.registry.failures import explain
from appliance.registry.golden_sets import GoldenSets
from appliance.registry.refs import Ref, parse_ref
from appliance.registry.rows import AuditRow
from appliance.registry.runs import Runs
from appliance.registry.schema import MIGRATIONS, RUN_STATES, SCHEMA_VERSION
from appliance.registry.tags import Tags
from appliance.workspace import Workspace


class Registry:
    """The workspace's registry. Open it with :meth:`Registry.open`; close it (or use ``with``).

    It owns the connection, the transactions and the audit log (held in its :class:`Core`),
    and one object per table group, each handed the core and the groups it reads:
    ``models`` (base models), ``datasets`` (dataset versions and their metadata files),
    ``runs``, ``adapters`` (adapter versions and their lineage), ``tags``, ``exports``,
    ``evaluations`` and ``golden_sets``.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        """The connection the table groups share (rebuilds insert through it directly)."""
        self.ws: Workspace = core.ws
        self.conn: sqlite3.Connection = core.conn
        self.path: Path = core.path
        """The database file (the workspace's registry, or a rebuild's new file beside it)."""
        self.readonly: bool = core.readonly
        self.models = BaseModels(core)
        self.datasets = DatasetVersions(core)
        self.runs = Runs(core, self.models, self.datasets)
        self.adapters = AdapterVersions(core, self.models, self.datasets, self.runs)
        self.tags = Tags(core, self.adapters)
        self.exports = Exports(core, self.adapters)
        self.evaluations = Evaluations(core, self.adapters, self.datasets)
        self.golden_sets = GoldenSets(core, self.adapters, self.datasets)

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
        return cls(open_core(ws, audit_key, readonly=readonly, path=path))

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

    # -- transactions and audit ----------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction; nested blocks (the table groups' own) become savepoints of
        it, so several changes commit together or not at all (see :meth:`Core.transaction`)."""
        return self.core.transaction()

    @property
    def audit_key(self) -> bytes | None:
        """The key of the keyed audit chain this registry was opened with, if any."""
        return self.core.audit_key

    def audit(self, action: str, obj: str, details: Mapping[str, Any]) -> None:
        """Append one chained audit row (inside the current transaction, if one is open); see
        :meth:`Core.audit` for when it refuses."""
        self.core.audit(action, obj, details)

    def audit_keyed(self) -> bool:
        """Whether the chain has become keyed (then writing needs the key)."""
        return self.core.audit_keyed()

    def verify_audit(self) -> ChainReport:
        """Check the whole chain.

        Raises:
            PassphraseError: keyed rows exist and this registry has no key to check them.
        """
        return self.core.verify_audit()

    def acknowledge_audit_break(self) -> list[tuple[int, str]]:
        """Record, in the log itself, that a person has seen its current problems.

        Writers refuse a broken chain until then; afterwards the listed problems are reported
        as acknowledged and writing resumes. The row is keyed like any other, so only somebody
        with a passphrase can acknowledge.

        Returns:
            The problems acknowledged (empty: the chain was intact, nothing was written).
        """
        with self.core.transaction():
            problems = self.core.verify_audit().problems
            if problems:
                self.core.audit(
                    audit_chain.ACKNOWLEDGE,
                    "audit",
                    {"problems": [[seq, what] for seq, what in problems]},
                )
        return problems

    def audit_rows(self, *, limit: int | None = None, action: str | None = None) -> list[AuditRow]:
        """Audit rows, oldest first (the last ``limit`` when given)."""
        if action:
            rows = self.core.query(
                "SELECT * FROM audit WHERE action = ? OR action LIKE ? ORDER BY seq",
                (action, f"{action}.%"),
            )
        else:
            rows = self.core.query("SELECT * FROM audit ORDER BY seq")
        if limit is not None:
            rows = rows[-limit:] if limit > 0 else []
        return [cast(AuditRow, self.core.row("audit", row)) for row in rows]

    # -- health --------------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """SQLite's ``integrity_check`` and ``foreign_key_check``: empty when all is well."""
        problems = [str(r[0]) for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        for table, rowid, parent, _ in self.conn.execute("PRAGMA foreign_key_check"):
            problems.append(f"{table} row {rowid} points at a missing {parent} row")
        return problems


__all__ = [
    "MIGRATIONS",
    "RUN_STATES",
    "SCHEMA_VERSION",
    "ChainReport",
    "Ref",
    "Registry",
    "parse_ref",
]
