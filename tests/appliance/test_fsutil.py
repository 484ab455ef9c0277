"""Reading a file that must be a regular file of bounded size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.fsutil import FileTooLargeError, SpecialFileError, read_regular_file


def test_the_cap_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(path, 100) == b"x" * 100
    with pytest.raises(FileTooLargeError) as info:
        read_regular_file(path, 99)
    assert (info.value.size, info.value.cap) == (100, 99)


def test_reading_stops_at_the_cap_when_the_size_lies() -> None:
    # procfs files report size 0 and yet have content: the size check alone would pass them.
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0
    with pytest.raises(FileTooLargeError) as info:
        read_regular_file(status, 10)
    assert info.value.size == 11  # read one byte past the cap, then stopped
    assert b"Name:" in read_regular_file(status, 1 << 20)


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes: a blocking open would wait forever
    for path, kind in [
        (fifo, "a FIFO (named pipe)"),
        (Path("/dev/zero"), "a character device (such as /dev/zero)"),
        (tmp_path, "a folder"),
    ]:
        with pytest.raises(SpecialFileError) as info:
            read_regular_file(path, 1 << 20)
        assert info.value.strerror == f"{kind}, not a regular file"
