"""From a file to numbered canonical rows and problems: the one reading path of every import.

The CLI's ``dataset import`` (through :func:`appliance.datasets.prepare.prepare`) and the
desktop app's import wizard (:mod:`appliance.datasets.wizard`) both read files here, so they
accept the same files, with the same column mapping and the same messages.

Two steps: :func:`open_source` reads what can be known before choosing a format (the columns,
the detected format and the other candidates; for Parquet only the schema), then :func:`parse`
normalises every row with the chosen format, reporting progress and checking for cancellation
between rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.datasets.canonical import Row
from appliance.datasets.columns import FORMAT_ROLES, ColumnMap, candidate_formats, parse_mapping
from appliance.datasets.control import CancelFlag, Control
from appliance.datasets.formats import FORMATS, detect_format, normalise_rows
from appliance.datasets.parquet import ParquetSource, is_parquet
from appliance.datasets.problems import Problem
from appliance.datasets.sources import Source, read_source
from appliance.errors import DatasetError, UsageError
from appliance.progress import Progress

CHUNK_ROWS = 1000
"""Rows normalised between two progress reports and cancellation checks."""
_FIELD_SCAN = 1000
"""JSON records whose keys make up the "columns" shown for a JSON file."""


@dataclass
class Opened:
    """A file opened for import, before its rows are normalised."""

    source_name: str
    source_kind: str
    """jsonl, json, csv, tsv, text or parquet."""
    columns: list[str] | None
    """The file's own columns (CSV/TSV/Parquet header; the keys of JSON records); None for text."""
    mapping: ColumnMap
    detected: str | None
    """The format detection finds (after the mapping); None when it cannot tell."""
    detect_error: str | None
    """Why detection failed: the CLI's message (None when it did not fail)."""
    candidates: list[str]
    """Formats whose required fields are present (after the mapping), in detection order."""
    rows_hint: int
    """Examples (JSON, CSV, text) or rows (Parquet) in the file, for progress; read-level
    problems not included."""
    _source: Source | None = field(default=None, repr=False)
    _parquet: ParquetSource | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        self._source = None


@dataclass
class Parsed:
    """Every row of a file normalised with one format."""

    source_name: str
    source_kind: str
    format: str
    rows: list[tuple[int, Row]]
    """Canonical rows with their line (row number for Parquet), in file order."""
    problems: list[Problem]
    """Every problem, in file order; fields named after the file's columns."""
    records: int
    """Examples read, valid or not (rows that could not even be read included)."""

    @property
    def invalid_rows(self) -> int:
        return len({p.line for p in self.problems})


def _json_columns(src: Source) -> list[str]:
    seen: dict[str, None] = {}
    for record in src.records[:_FIELD_SCAN]:
        seen.update(dict.fromkeys(record.data))
    return list(seen)


def _detect(src: Source) -> tuple[str | None, str | None]:
    try:
        return detect_format(src), None
    except DatasetError as exc:
        return None, str(exc)


def open_source(
    path: Path, columns: Iterable[str] | Mapping[str, str] | ColumnMap | None = None
) -> Opened:
    """Read ``path`` as far as choosing a format needs.

    Args:
        columns: role -> column mapping, as ``["output=answer"]`` (the CLI) or a dict.

    Raises:
        DatasetError: the file as a whole is unusable (missing, empty, binary, not Parquet...),
            or a mapped column does not exist.
        UsageError: a malformed mapping, or a mapping for a plain text file.
    """
    path = Path(path)
    mapping = parse_mapping(columns)
    if is_parquet(path):
        pq = ParquetSource(path)
        mapping.check_columns(pq.file, pq.fields)
        fields = mapping.rename_fields(pq.fields)
        probe = Source(pq.file, "parquet", fields=fields)
        detected, error = _detect(probe)
        return Opened(
            pq.file,
            "parquet",
            list(pq.fields),
            mapping,
            detected,
            error,
            candidate_formats(fields),
            pq.num_rows,
            _parquet=pq,
        )
    src = read_source(path)
    if src.kind == "text":
        if mapping:
            raise UsageError(
                f"{src.file} is a plain text file: it has no columns to map; drop --map"
            )
        return Opened(
            src.file, "text", None, mapping, "text", None, ["text"], len(src.records), _source=src
        )
    found = src.fields if src.fields is not None else _json_columns(src)
    if mapping:
        if src.fields is not None:
            mapping.check_columns(src.file, src.fields)
        else:
            every: dict[str, None] = {}
            for record in src.records:
                every.update(dict.fromkeys(record.data))
            mapping.check_columns(src.file, every)
        src = Source(
            src.file,
            src.kind,
            records=mapping.apply(src.records),
            problems=src.problems,
            fields=None if src.fields is None else mapping.rename_fields(src.fields),
        )
    detected, error = _detect(src)
    if src.fields is not None:
        candidates = candidate_formats(src.fields)
    else:
        candidates = candidate_formats(_json_columns(src))
    return Opened(
        src.file,
        src.kind,
        found,
        mapping,
        detected,
        error,
        candidates,
        len(src.records),
        _source=src,
    )


def resolve_format(opened: Opened, fmt: str) -> str:
    """The format to read with: ``fmt``, or the detected one for ``auto``.

    Raises:
        UsageError: an unknown format name.
        DatasetError: ``auto`` and detection failed (the CLI's message).
    """
    if fmt == "auto":
        if opened.detected is None:
            raise DatasetError(opened.detect_error or f"{opened.source_name}: unknown format")
        return opened.detected
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    return fmt


def parse(
    opened: Opened,
    fmt: str = "auto",
    *,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> Parsed:
    """Normalise every row of an opened file with ``fmt`` (``auto``: the detected format).

    Progress is reported as ``(rows done, rows in the file, "checking")``; ``cancel`` is checked
    between chunks of :data:`CHUNK_ROWS` rows.

    Raises:
        ImportCancelled: ``cancel`` was set.
        DatasetError, UsageError: see :func:`resolve_format`; a plain text file read as
            another format; damaged Parquet data.
    """
    chosen = resolve_format(opened, fmt)
    control = Control(progress, cancel)
    total = opened.rows_hint
    rows: list[tuple[int, Row]] = []
    problems: list[Problem] = []
    records = 0
    unreadable: set[int] = set()
    control.step(0, total, "checking")
    for chunk in _chunks(opened, chosen):
        unreadable.update(p.line for p in chunk.problems)
        numbered, found = normalise_rows(chunk, chosen)
        rows.extend(numbered)
        problems.extend(found)
        records += len(chunk.records)
        control.step(records, total, "checking")
    # Rows that could not even be read (bad JSON, wrong cell count) are examples too.
    records += len(unreadable)
    problems.sort(key=lambda p: p.line)
    return Parsed(
        opened.source_name,
        opened.source_kind,
        chosen,
        rows,
        opened.mapping.name_back(problems),
        records,
    )


def _chunks(opened: Opened, fmt: str) -> Iterable[Source]:
    """The rows to normalise, a chunk at a time; read-level problems travel with the first."""
    if opened._parquet is not None:
        mapping = opened.mapping
        wanted = [mapping.column_of(role) for role in FORMAT_ROLES[fmt]]
        for batch in opened._parquet.batches(wanted):
            batch.records = mapping.apply(batch.records)
            batch.fields = mapping.rename_fields(batch.fields or [])
            yield batch
        return
    src = opened._source
    if src is None:
        raise DatasetError(f"{opened.source_name}: the file was closed; open it again")
    first = True
    for start in range(0, max(len(src.records), 1), CHUNK_ROWS):
        yield Source(
            src.file,
            src.kind,
            records=src.records[start : start + CHUNK_ROWS],
            problems=list(src.problems) if first else [],
            fields=src.fields,
        )
        first = False


def parse_file(
    path: Path,
    fmt: str = "auto",
    columns: Iterable[str] | Mapping[str, str] | ColumnMap | None = None,
    *,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> Parsed:
    """:func:`open_source` then :func:`parse`, closing the file after."""
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    opened = open_source(path, columns)
    try:
        return parse(opened, fmt, progress=progress, cancel=cancel)
    finally:
        opened.close()
