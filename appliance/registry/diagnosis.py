"""What a SQLite failure means for the person at the keyboard, and what to do about it.

The same ``sqlite3`` exception can mean a damaged file (rebuild it), a read-only workspace
(nothing is wrong with the file), a full disk or a busy database: advising a destructive
rebuild for a healthy registry on a read-only mount is worse than no advice. Every place that
turns a ``sqlite3.Error`` into an :class:`~appliance.errors.ApplianceError` goes through
:func:`explain`, so the diagnosis is made once, from SQLite's own error code and the state of
the folder.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.errors import RegistryError
from appliance.workspace import read_only_reason

REBUILD_HINT = (
    "run 'appliance verify --rebuild-index' to rebuild it from the workspace folders (the "
    "damaged file is kept beside it)"
)


class RegistryDamagedError(RegistryError):
    """The registry file is not a database, or SQLite found a damaged page in it."""


class RegistryReadOnlyError(RegistryError):
    """The registry cannot be written because the workspace is read-only; it is not damaged."""


def error_name(exc: BaseException) -> str:
    """SQLite's error name (``SQLITE_CORRUPT``, ``SQLITE_READONLY_DBMOVED``...), or ""."""
    return str(getattr(exc, "sqlite_errorname", "") or "")


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file itself is damaged (not busy, full or read-only)."""
    name = error_name(exc)
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def explain(exc: sqlite3.Error, path: Path, doing: str = "reading it") -> RegistryError:
    """One clear, classified error for a SQLite failure on the registry at ``path``.

    Args:
        exc: what SQLite raised.
        path: the registry file.
        doing: what the appliance was doing, for the message ("reading it", "writing").
    """
    name = error_name(exc)
    folder = path.parent
    read_only = read_only_reason(folder)
    if is_damage(exc):
        return RegistryDamagedError(
            f"the registry {path} is damaged ({exc}) while {doing}; {REBUILD_HINT}"
        )
    if name.startswith("SQLITE_READONLY") or (
        read_only is not None and name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR"))
    ):
        why = read_only or "the registry file is not writable"
        return RegistryReadOnlyError(
            f"the workspace {folder} is read-only ({why}); its registry is fine but cannot be "
            "changed here. Commands that only read still work; to change it, make the "
            "workspace writable"
        )
    if name.startswith("SQLITE_CONSTRAINT"):
        return RegistryError(f"the registry {path} refused the change ({exc})")
    if name.startswith("SQLITE_FULL") or "disk is full" in str(exc).lower():
        return RegistryError(
            f"the disk holding {path} is full ({exc}); nothing was written; free some space "
            "and try again"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return RegistryError(
            f"the registry {path} is busy ({exc}); another process is writing, try again in "
            "a moment"
        )
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return RegistryError(
            f"cannot open the registry {path} ({exc}); check that the workspace folder and "
            "registry.sqlite exist and belong to you"
        )
    if name.startswith("SQLITE_IOERR"):
        return RegistryError(
            f"the disk failed while {doing} the registry {path} ({exc}); check the disk and "
            "free space, then try again"
        )
    return RegistryError(f"the registry {path} failed while {doing} ({exc}); try again")
