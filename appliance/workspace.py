"""The workspace: the one folder on disk where the appliance keeps everything.

Layout (mode 0700)::

    HOME/
      FORMAT            JSON: workspace format version, creation time, appliance version
      registry.sqlite   the SQLite registry (an index over the folders below)
      keys/             vault key slots (one per person)
      datasets/ models/ runs/ adapters/   (a run's log is its folder's train.log)
      tmp/              scratch for atomic writes (same filesystem as the rest)
      .lock             the single-writer lock (flock; holds "PID command")

One process writes at a time: :meth:`Workspace.writer` takes an exclusive ``flock`` on
``.lock``. The kernel drops the lock when its process dies, so a stale lock (a crashed
process) never blocks anybody; the PID and command in the file only serve the message. Having
the lock also proves that no other writer of ours is active, so the writer first removes the
temporary files of writers that died (:mod:`appliance.leftovers`).

A workspace may be read-only (a read-only mount, or another user's folder): readers still work,
and writers are refused with a message that says so (:func:`read_only_reason`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance import __version__, leftovers
from appliance.errors import WorkspaceError, WorkspaceLockedError, WorkspaceReadOnlyError
from appliance.fsutil import atomic_write_bytes

FORMAT_VERSION = 1
"""Version of the on-disk layout. Bump it with a migration when the layout changes."""

FORMAT_FILE = "FORMAT"
"""The file that makes a folder a workspace: JSON with the format version, written last by init."""
SUBFOLDERS = ("keys", "datasets", "models", "runs", "adapters", "tmp")
RETIRED_SUBFOLDERS = ("exports", "logs")
"""Folders that workspaces made by earlier versions have and nothing ever wrote to (exports go
outside the workspace; a run logs into its own folder). Accepted while empty, never created."""
KEY_SLOT_SUFFIX = ".slot"
"""How the vault's key slot files in ``keys/`` end (:mod:`appliance.vault.keyslots` writes them).
Defined with the layout, so the registry and the inventory can tell a vaulted workspace
without importing the vault."""
HOME_ENV = "APPLIANCE_HOME"
LOCK_WAIT_S = 5.0
"""How long a writer waits for another writer to finish before giving up."""


def default_home() -> Path:
    """The workspace used without ``--home``: ``$APPLIANCE_HOME`` or the user-data folder."""
    env = os.environ.get(HOME_ENV)
    if env is not None:
        if not env.strip():
            raise WorkspaceError(f"{HOME_ENV} is set but empty; unset it or give it a folder path")
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("finetune-appliance", appauthor=False))


def resolve_home(home: Path | str | None) -> Path:
    """``home`` made absolute, or the default workspace when it is None."""
    path = default_home() if home is None else Path(home).expanduser()
    return path.absolute()


@dataclass(frozen=True)
class Workspace:
    """An initialised workspace folder. Obtain one with :func:`init` or :func:`open_workspace`."""

    home: Path

    @property
    def registry_path(self) -> Path:
        return self.home / "registry.sqlite"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    def key_slot_files(self) -> list[Path]:
        """The vault's key slot files, sorted by label (none: the workspace has no vault)."""
        if not self.keys_dir.is_dir():
            return []
        return sorted(
            p for p in self.keys_dir.iterdir() if p.suffix == KEY_SLOT_SUFFIX and p.is_file()
        )

    def has_key_slots(self) -> bool:
        """Whether the workspace has a vault (then its data and audit chain are keyed)."""
        return bool(self.key_slot_files())

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def lock_path(self) -> Path:
        return self.home / ".lock"

    def info(self) -> dict[str, object]:
        """The parsed FORMAT file."""
        return _read_format(self.home)

    @contextmanager
    def writer(self, command: str, wait_s: float | None = None) -> Iterator[None]:
        """Hold the workspace's single-writer lock for the duration of a mutating command.

        Args:
            command: what this process is doing, shown to anybody who finds the lock taken.
            wait_s: how long to wait for another writer; :data:`LOCK_WAIT_S` when None.

        Raises:
            WorkspaceLockedError: another live process holds the lock after ``wait_s``.
        """
        deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._unwritable(command, exc) from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        holder = _read_holder(fd)
                        raise WorkspaceLockedError(
                            f"workspace {self.home} is in use by {holder}; wait for it to finish "
                            "or stop it, then try again"
                        ) from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
            with suppress(OSError):  # cleaning is a courtesy: never a reason to fail
                leftovers.remove_dead(self.home)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _unwritable(self, command: str, exc: OSError) -> WorkspaceError:
        reason = read_only_reason(self.home)
        if reason is not None or exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            why = reason or (exc.strerror or str(exc)).lower()
            return WorkspaceReadOnlyError(
                f"workspace {self.home} is read-only ({why}); '{command}' changes it and cannot "
                "run here. Commands that only read (list, show, verify, audit) still work; to "
                "change it, make it writable or copy it to a writable place"
            )
        return WorkspaceError(
            f"cannot take the writer lock {self.lock_path}: {exc.strerror or exc}; check the "
            "workspace folder"
        )


def read_only_reason(path: Path) -> str | None:
    """Why nothing can be written in the folder ``path``, or None when it is writable.

    A read-only mount is read-only for everybody, root included; a folder without write
    permission only for those the permission applies to (``os.access`` asks the kernel, so
    root, who may write anyway, is not told otherwise).
    """
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "a read-only file system"
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return "no write permission for this user"
    return None


def _read_holder(fd: int) -> str:
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    pid, _, command = raw.partition(" ")
    if not pid:
        return "another process"
    return f"PID {pid} ({command or 'unknown command'})"


def _read_format(home: Path) -> dict[str, object]:
    path = home / FORMAT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkspaceError(
            f"no workspace at {home}; run 'appliance init' first, or pass --home with the "
            "folder of an existing workspace"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkspaceError(
            f"{path} is unreadable or damaged ({exc}); restore the workspace from backup"
        ) from None
    version = data.get("format") if isinstance(data, dict) else None
    if not isinstance(version, int):
        raise WorkspaceError(f"{path} has no format version; restore the workspace from backup")
    if version > FORMAT_VERSION:
        raise WorkspaceError(
            f"workspace {home} was written by a newer appliance (format {version}; this version "
            f"reads up to {FORMAT_VERSION}); upgrade the appliance to use it"
        )
    return data


def _check_folder_usable(home: Path) -> None:
    if home.exists() and not home.is_dir():
        raise WorkspaceError(f"{home} is a file, not a folder; choose a folder path for --home")
    parent = home if home.exists() else _existing_ancestor(home)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WorkspaceError(
            f"cannot create a workspace at {home}: {parent} is not writable by you; "
            "choose a folder you can write to (--home DIR)"
        )


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise WorkspaceError(
                    f"cannot create a workspace at {path}: {parent} is a file, not a folder"
                )
            return parent
    return Path("/")


def open_workspace(home: Path | str | None = None) -> Workspace:
    """Open an existing workspace, checking its format version.

    Raises:
        WorkspaceError: there is none at ``home``, it is damaged, or it is from a newer version.
    """
    path = resolve_home(home)
    if path.exists() and not path.is_dir():
        raise WorkspaceError(f"{path} is a file, not a workspace folder; check --home")
    _read_format(path)
    return Workspace(path)


def check_home(home: Path | str | None = None) -> bool:
    """Check that a workspace can be created or opened at ``home``, touching nothing.

    Returns:
        Whether a workspace exists there already.

    Raises:
        WorkspaceError: a file, an unwritable place, a foreign non-empty folder, or a workspace
            of a newer version.
    """
    path = resolve_home(home)
    _check_folder_usable(path)
    if (path / FORMAT_FILE).exists():
        _read_format(path)
        return True
    # Only what an interrupted init leaves (empty subfolders, the lock file) may be there: a
    # failed init removes what it finds, so anything else could be lost.
    if path.exists() and any(not _init_leftover(p) for p in path.iterdir()):
        raise WorkspaceError(
            f"{path} is not empty and is not a workspace; choose an empty or new folder"
        )
    return False


def _init_leftover(entry: Path) -> bool:
    if entry.name == ".lock":
        return entry.is_file() and not entry.is_symlink()
    if (
        entry.name in (*SUBFOLDERS, *RETIRED_SUBFOLDERS)
        and entry.is_dir()
        and not entry.is_symlink()
    ):
        return not any(entry.iterdir())
    return False


def discard_new(home: Path, existed_before: bool) -> None:
    """Undo :func:`init` of a workspace that a failed command had just created.

    Only the workspace's own entries are removed (:func:`check_home` made sure that a folder
    which existed before held nothing else), so a file that appeared meanwhile stays.
    """
    if not existed_before:
        shutil.rmtree(home, ignore_errors=True)
        return
    own = {*SUBFOLDERS, FORMAT_FILE, ".lock", "registry.sqlite"}
    for child in home.iterdir():
        if child.name not in own and not child.name.startswith("registry.sqlite-"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def init(home: Path | str | None = None) -> tuple[Workspace, bool]:
    """Create a workspace at ``home`` (or the default), or open the one already there.

    The FORMAT file is written last, so an interrupted ``init`` leaves no workspace that looks
    complete; folders created by a failed ``init`` are removed again.

    Returns:
        The workspace and whether it was created now (False: it existed already).
    """
    path = resolve_home(home)
    if check_home(path):
        return open_workspace(path), False
    created: list[Path] = []
    try:
        for folder in [*reversed(path.parents), path]:
            if not folder.exists():
                folder.mkdir(mode=0o700)
                created.append(folder)
        os.chmod(path, 0o700)
        for name in SUBFOLDERS:
            sub = path / name
            if not sub.exists():
                sub.mkdir(mode=0o700)
                created.append(sub)
        record = {
            "format": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "appliance": __version__,
        }
        atomic_write_bytes(path / FORMAT_FILE, (json.dumps(record, indent=2) + "\n").encode())
    except OSError as exc:
        for folder in reversed(created):
            with suppress(OSError):
                folder.rmdir()
        raise WorkspaceError(
            f"cannot create a workspace at {path}: {exc.strerror or exc}; "
            "choose a folder you can write to (--home DIR)"
        ) from None
    return Workspace(path), True
