"""Leftovers: temporary files and folders of commands that were killed before they finished.

Every temporary name carries its writer's PID (:func:`appliance.fsutil.temp_name`), so a
leftover is recognisable as ours *and* as dead: its PID no longer runs. The next writer (holding
the workspace lock, so no other writer of ours is active) removes dead ones; ``appliance
verify`` lists them. Nothing else is ever removed: a file we cannot recognise as our own
temporary is somebody's, and is only reported.

Names written before temporary names carried a PID (the atomic writer's ``.NAME.xxxxxxxx.tmp``,
model import's ``tmp/import-NAME-xxxxxxxx``, adapter staging's ``tmp/adapter-NAME-xxxxxxxx``)
have no PID to check. Where only lock holders write, a writer that holds the lock knows their
maker is gone; in run folders and the token-stats cache, which child processes write without
the lock, they are only reported.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from appliance.fsutil import temp_owner

_LEGACY = (
    re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$"),
    re.compile(r"^import-.+-[0-9a-f]{8}$"),
    re.compile(r"^adapter-.+-[0-9a-f]{8}$"),
)
_LOCKED_PLACES = ("", "keys", "datasets", "models", "adapters", "exports", "tmp", "logs")
"""Folders (relative to the workspace home) written only under the writer lock."""


@dataclass(frozen=True)
class Leftover:
    """A temporary file or folder of ours."""

    path: Path
    pid: int | None
    """Its writer; None for a name from before PIDs were recorded (its writer is unknown)."""
    alive: bool
    """Whether that writer still runs (then it is work in progress, not a leftover)."""
    locked_place: bool
    """Whether it lies where only lock holders write (then a lock holder may judge it)."""

    def size(self) -> int:
        """Bytes it occupies (a folder: every file under it)."""
        if self.path.is_file() or self.path.is_symlink():
            return self.path.lstat().st_size
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                try:
                    total += (Path(root) / name).lstat().st_size
                except OSError:
                    continue
        return total

    def removable(self) -> bool:
        """Whether a lock holder may delete it: its writer is gone, and it is surely ours."""
        if self.pid is not None:
            return not self.alive and self.pid != os.getpid()
        return self.locked_place


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs (a reused PID counts as alive: never wrongly dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temporary names (with a PID, or from before PIDs)."""
    return temp_owner(name) is not None or any(p.match(name) for p in _LEGACY)


def find(home: Path) -> list[Leftover]:
    """Every temporary file or folder of ours in the workspace at ``home``, sorted by path."""
    found: list[Leftover] = []
    places = [(home / rel, True) for rel in _LOCKED_PLACES]
    places += [(p, True) for p in _subfolders(home / "adapters")]
    places += [(p, False) for p in _subfolders(home / "runs")]
    # Children (training, the token-stats job) may write here without holding the lock.
    places.append((home / "datasets" / "token-stats", False))
    for folder, locked in places:
        for entry in _entries(folder):
            if not is_temp_name(entry.name):
                continue
            pid = temp_owner(entry.name)
            alive = pid is not None and (pid == os.getpid() or pid_alive(pid))
            found.append(Leftover(entry, pid, alive, locked))
    return sorted(found, key=lambda lo: str(lo.path))


def remove_dead(home: Path) -> list[Leftover]:
    """Remove the leftovers of dead writers; call only while holding the writer lock.

    Returns:
        What was removed. Failures to remove are ignored: the next writer tries again.
    """
    removed = []
    for leftover in find(home):
        if not leftover.removable():
            continue
        try:
            if leftover.path.is_dir() and not leftover.path.is_symlink():
                shutil.rmtree(leftover.path)
            else:
                leftover.path.unlink()
        except OSError:
            continue
        removed.append(leftover)
    return removed


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_dir() and not p.is_symlink()]


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []
