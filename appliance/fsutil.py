"""Atomic, durable file writes and hashing: the only way the appliance writes a file.

An atomic write goes to a temporary file in the same folder, is flushed and fsynced, renamed
over the target, and then the folder itself is fsynced, so after a crash the target holds either
the old or the new content, never a mixture. Append-only logs (a run's events and log) are the
one exception, opened with :func:`open_append`: owner-only like every other file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
TEMP_RE = re.compile(r"\.pid(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp(?:-wal|-shm|-journal)?$")
"""Every temporary file or folder the appliance makes ends like ``.pid1234-abcd1234.tmp``:
the writer's PID in the name tells a leftover of a dead process from work in progress."""


def temp_name(stem: str) -> str:
    """A temporary name for ``stem`` owned by this process (see :data:`TEMP_RE`)."""
    return f"{stem}.pid{os.getpid()}-{secrets.token_hex(4)}.tmp"


def temp_owner(name: str) -> int | None:
    """The PID in a temporary name made by :func:`temp_name`, or None for any other name."""
    match = TEMP_RE.search(name)
    return int(match["pid"]) if match else None


def fsync_dir(folder: Path) -> None:
    """Make a rename or creation inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(target: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``target`` atomically when the block ends.

    If the block raises, the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.pid{os.getpid()}-", suffix=".tmp", dir=target.parent
    )
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``target`` with ``data`` atomically and durably."""
    with atomic_writer(target, mode) as handle:
        handle.write(data)


def open_append(path: Path) -> int:
    """A file descriptor appending to ``path``, created owner-only (0600) and kept so.

    ``open(path, "a")`` would create the file with the process umask (often 0644).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; ``progress`` receives bytes read per chunk."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


class SpecialFileError(OSError):
    """A path that should be a regular file is a device, FIFO, socket or folder."""


class FileTooLargeError(OSError):
    """A file is larger than the caller's cap; ``size`` is its size in bytes."""

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(errno.EFBIG, f"{size:,} bytes, over the limit of {cap:,} bytes")
        self.size = size
        self.cap = cap


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for messages."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device (such as /dev/zero)"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The content of ``path``, which must be a regular file of at most ``max_bytes``.

    The file is opened without blocking (a FIFO without a writer would otherwise hang the
    process, holding whatever lock it holds) and checked with ``fstat`` on the open descriptor,
    so a symlink to ``/dev/zero`` or a file swapped after a check is judged by what is really
    read. The size is checked before reading, and reading stops one byte past the cap, so a
    file that grows while it is read (or reports a wrong size) cannot exhaust memory either.

    Raises:
        SpecialFileError: a folder, device, FIFO or socket.
        FileTooLargeError: larger than ``max_bytes``.
        OSError: it cannot be opened or read (missing, permission denied, ...).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL
            raise SpecialFileError(code, f"{file_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise FileTooLargeError(info.st_size, max_bytes)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FileTooLargeError(total, max_bytes)
        return b"".join(chunks)
    finally:
        os.close(fd)
