"""What a failed SQLite statement means, in words a person can act on.

SQLite reports a damaged file, a full disk, a read-only file and a busy lock through one
exception type; only the result code tells them apart. Giving every failure the same advice
("check free disk space") sent people with a damaged registry to clean their disk, and telling
people on a read-only mount that their healthy registry "is not a usable SQLite database" sent
them to a destructive rebuild, so each class of code gets its own message, and the state of the
folder decides between "damaged" and "read-only". Writes go through :func:`change_refused`;
opening and reading through :func:`explain`.
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
        return RegistryDamagedError(
            f"the registry {path} is damaged ({exc}); nothing was written: run 'appliance "
            "verify' to see what is affected, then 'appliance verify --rebuild-index' to "
            "rebuild it from the workspace folders"
        )
    read_only = _read_only_workspace(exc, path)
    if read_only is not None:
        return RegistryReadOnlyError(f"{read_only}; nothing was written")
    if code == SQLITE_FULL:
        return RegistryError(
            f"the disk holding the registry {path} is full ({exc}); nothing was written: free "
            "some space and try again"
        )
    if code == SQLITE_READONLY:
        return RegistryReadOnlyError(
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


def explain(exc: sqlite3.Error, path: Path, doing: str = "reading it") -> RegistryError:
    """The error to raise when opening or reading the registry at ``path`` failed.

    Args:
        exc: what SQLite raised.
        path: the registry file.
        doing: what the appliance was doing, for the message ("opening it", "reading it").
    """
    code = primary_code(exc)
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return RegistryDamagedError(
            f"the registry {path} is damaged ({exc}) while {doing}; {REBUILD_HINT}"
        )
    read_only = _read_only_workspace(exc, path)
    if read_only is not None:
        return RegistryReadOnlyError(read_only)
    if code == SQLITE_READONLY:
        return RegistryReadOnlyError(
            f"the registry {path} is read-only ({exc}): this command needs a workspace you can "
            "write to"
        )
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return RegistryError(
            f"the registry {path} is busy ({exc}); another process is writing, try again in "
            "a moment"
        )
    if code == SQLITE_CANTOPEN:
        return RegistryError(
            f"cannot open the registry {path} ({exc}); check that the workspace folder and "
            "registry.sqlite exist and belong to you"
        )
    if code in (SQLITE_IOERR, SQLITE_FULL):
        return RegistryError(
            f"the registry {path} failed while {doing} ({exc}): check the disk holding it and "
            "its free space, then try again"
        )
    return RegistryError(f"the registry {path} failed while {doing} ({exc})")


def _read_only_workspace(exc: sqlite3.Error, path: Path) -> str | None:
    """The read-only message when ``exc`` comes from a workspace that cannot be written."""
    code = primary_code(exc)
    if code not in (SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_IOERR):
        return None
    reason = read_only_reason(path.parent)
    if reason is None:
        return None
    return (
        f"the workspace {path.parent} is read-only ({reason}); its registry is fine but cannot "
        "be changed here. Commands that only read still work; to change it, make the workspace "
        "writable"
    )
