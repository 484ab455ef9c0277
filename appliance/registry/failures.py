"""What a failed SQLite statement means, in words a person can act on.

SQLite reports a damaged file, a full disk, a read-only file and a busy lock through one
exception type; only the result code tells them apart. Giving every failure the same advice
("check free disk space") sent people with a damaged registry to clean their disk, so each
class of code gets its own message.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.errors import RegistryError

# Primary result codes (the low byte of an extended code), from sqlite3.h.
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_CONSTRAINT = 19
SQLITE_NOTADB = 26


def primary_code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``exc`` (None when the driver gave none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the database file itself is damaged (not busy, full or read-only)."""
    return primary_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def change_refused(exc: sqlite3.Error, path: Path) -> RegistryError:
    """The error to raise when a write transaction on the registry at ``path`` failed.

    The transaction was rolled back before this is raised, so every message says that nothing
    was written.
    """
    code = primary_code(exc)
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return RegistryError(
            f"the registry {path} is damaged ({exc}); nothing was written: run 'appliance "
            "verify' to see what is affected, then 'appliance verify --rebuild-index' to "
            "rebuild it from the workspace folders"
        )
    if code == SQLITE_FULL:
        return RegistryError(
            f"the disk holding the registry {path} is full ({exc}); nothing was written: free "
            "some space and try again"
        )
    if code == SQLITE_READONLY:
        return RegistryError(
            f"the registry {path} is read-only ({exc}); nothing was written: this command "
            "needs a workspace you can write to"
        )
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return RegistryError(
            f"the registry {path} is busy ({exc}); another process is writing: nothing was "
            "written, try again in a moment"
        )
    if code in (SQLITE_IOERR, SQLITE_CANTOPEN):
        return RegistryError(
            f"the registry {path} could not be read or written ({exc}); nothing was written: "
            "check the disk and the workspace folder's permissions, then try again"
        )
    if code == SQLITE_CONSTRAINT:
        return RegistryError(
            f"the registry {path} refused the change as inconsistent ({exc}); nothing was "
            "written: run 'appliance verify' and report this"
        )
    return RegistryError(f"the registry {path} refused the change ({exc}); nothing was written")
