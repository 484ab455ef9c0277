"""Parquet files, read a batch of rows at a time.

The whole file is never decoded at once: :meth:`ParquetSource.batches` walks the row groups
with ``iter_batches`` over only the columns the chosen format reads, and each batch becomes
records for the same normalisation as a CSV file (same column rules, same problems). Only the
canonical rows that come out of it are kept.

A Parquet file has no lines: the "line" of a problem is the row number, counted from 1.
Cells are typed, unlike CSV's: a null cell counts as a missing field, a number where text is
expected is "must be a string, not a number", and a conversation column may hold JSON text or
a native list of ``{role, content}`` structs.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.datasets import sources
from appliance.datasets.problems import Problem, file_error
from appliance.datasets.sources import MAX_ROW_BYTES, Record, Source
from appliance.errors import DatasetError
from appliance.units import format_bytes

EXTENSIONS = (".parquet", ".pq")
MAGIC = b"PAR1"
BATCH_ROWS = 2048
"""Rows decoded at a time: small enough that a batch of long documents stays a few MiB."""


def is_parquet(path: Path) -> bool:
    """Whether ``path`` is a regular file named or shaped like Parquet.

    Anything but a regular file (a folder, a FIFO, a device) is left to the text readers,
    which refuse it with their own message; a FIFO is never opened here.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not stat.S_ISREG(mode):
        return False
    if path.suffix.lower() in EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _size(value: Any) -> int:
    """Characters of text in a cell, nested values included (for the row size limit)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_size(v) for v in value)
    return 0


class ParquetSource:
    """An open Parquet file: its columns and row count now, its rows batch by batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.name
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(
                f"{self.file}: reading Parquet needs pyarrow, which this installation lacks; "
                "export the file as JSONL or CSV, or install the full bundle"
            ) from None
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
        if size == 0:
            raise file_error(self.file, "the file is empty; export your data to it first")
        try:
            self._pf = pq.ParquetFile(path, memory_map=False, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise file_error(
                self.file,
                f"not a readable Parquet file ({reason}); check that it was saved as Parquet, "
                "or give it the extension of its real format",
            ) from None
        self.fields: list[str] = list(self._pf.schema_arrow.names)
        meta = self._pf.metadata
        self.num_rows: int = int(meta.num_rows)
        self.row_groups: int = int(meta.num_row_groups)
        # The same limit as a text file, on the data once decoded: the canonical rows are kept
        # in memory, and a compressed file can hold many times its size.
        # (The encoded size is checked here; the text actually read, batch by batch.)
        encoded = sum(int(meta.row_group(i).total_byte_size) for i in range(self.row_groups))
        if encoded > sources.MAX_FILE_BYTES:
            self._pf.close()
            raise self._too_large(encoded)

    def _too_large(self, size: int) -> DatasetError:
        return DatasetError(
            f"{self.path} holds over {format_bytes(size)} of data once decoded, over the "
            f"{format_bytes(sources.MAX_FILE_BYTES)} limit of one import; split it into smaller "
            "files (each becomes a version)"
        )

    def close(self) -> None:
        self._pf.close()

    def batches(
        self, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS
    ) -> Iterator[Source]:
        """The rows in order, as one :class:`Source` of records per batch.

        Args:
            columns: read only these columns (those the format uses); None: all.

        Raises:
            DatasetError: the file's data is damaged (a page that does not decode).
        """
        import pyarrow as pa

        wanted = [c for c in (columns if columns is not None else self.fields) if c in self.fields]
        row = text = 0
        batches = self._pf.iter_batches(batch_size=batch_rows, columns=wanted, use_threads=False)
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                cells = batch.to_pylist()
            except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
                raise file_error(
                    self.file,
                    f"damaged Parquet data after row {row} ({reason}); export the file again",
                ) from None
            src = Source(self.file, "parquet", fields=list(self.fields))
            for data in cells:
                row += 1
                # A null cell is a missing field, as an absent key is in JSON.
                record = {k: v for k, v in data.items() if v is not None}
                size = _size(record)
                text += size
                if text > sources.MAX_FILE_BYTES:
                    raise self._too_large(text)
                if size > MAX_ROW_BYTES:
                    src.problems.append(Problem(self.file, row, None, "row over the 1 MiB limit"))
                    continue
                src.records.append(Record(row, record))
            yield src
