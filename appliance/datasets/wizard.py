"""The import wizard's core: a preview that stores nothing, then the store step.

The desktop app's wizard is a thin view over two calls (torch-free, run on a worker thread):

1. :func:`preview_import` reads the file with the chosen format (or the detected one) and
   column mapping and returns an :class:`ImportPreview`: the detected format and the other
   candidates, the columns found, the first normalised rows, the counts, and every bad row
   with file, line and problem. Nothing is written anywhere.
2. :func:`store_import` stores the previewed rows as the next version of a dataset (skipping
   the bad rows if the user chose to), with progress and cancellation; a cancelled store
   leaves nothing behind.

Both go through the same reading and storing code as ``appliance dataset import``
(:mod:`.reading`, :func:`.prepare.prepare_parsed`, :func:`.store.store_prepared`), so the
wizard accepts what the CLI accepts and shows the same messages; a version stored by the
wizard has the same sha256 as the CLI's import of the same file with the same options.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.datasets import canonical
from appliance.datasets.canonical import Row
from appliance.datasets.columns import ColumnMap
from appliance.datasets.control import CancelFlag
from appliance.datasets.formats import FORMATS
from appliance.datasets.prepare import Prepared, prepare_parsed
from appliance.datasets.problems import DatasetValidationError, Problem, problem_lines
from appliance.datasets.reading import Parsed, open_source, parse
from appliance.datasets.store import store_prepared
from appliance.errors import DatasetError, UsageError
from appliance.progress import Progress
from appliance.registry import Registry
from appliance.registry.refs import check_name
from appliance.registry.rows import DatasetVersionRow
from appliance.vault import Vault

SAMPLE_ROWS = 20


@dataclass
class ImportPreview:
    """What importing a file would store, before anything is stored."""

    source_name: str
    source_kind: str
    """jsonl, json, csv, tsv, text or parquet."""
    columns: list[str] | None
    """The file's own columns (CSV/TSV/Parquet header, keys of JSON records); None for text."""
    mapping: dict[str, str]
    """Role -> column, as given (empty when the columns are named after the roles)."""
    requested: str
    """The format asked for: ``auto`` or one of :data:`FORMATS`."""
    detected: str | None
    """What detection finds (after the mapping); None when it cannot tell."""
    candidates: list[str]
    """Formats whose fields are present, in detection order (for the override menu; any of
    :data:`FORMATS` may still be forced)."""
    format: str | None
    """The format the rows were read with; None when there is none (see ``format_error``)."""
    format_error: str | None
    """Why no row could be read with the requested format: the CLI's message."""
    sample: list[tuple[int, Row]]
    """The first normalised rows with their line (row number for Parquet)."""
    records: int
    """Examples in the file, valid or not."""
    valid_rows: int
    duplicates: int
    """Valid rows that are exact duplicates of an earlier one (removed when stored)."""
    train_rows: int
    eval_rows: int
    problems: list[Problem]
    """Every problem, in file order (the wizard's validation report)."""
    eval_fraction: float
    seed: int
    parsed: Parsed | None = field(default=None, repr=False)

    @property
    def invalid_rows(self) -> int:
        return len({p.line for p in self.problems})

    @property
    def can_store(self) -> bool:
        """Whether a store could succeed (with skip-bad-rows when there are problems)."""
        return self.parsed is not None and self.valid_rows > 0

    def report_lines(self) -> list[str]:
        """The validation report as the CLI prints it: the first problems, then a count."""
        return problem_lines(self.problems)

    def validation_error(self) -> DatasetValidationError | None:
        """The error the CLI gives for this file without ``--skip-invalid`` (None: no problem)."""
        if not self.problems:
            return None
        return DatasetValidationError(
            self.source_name,
            self.problems,
            "fix them, or pass --skip-invalid to import the valid rows only",
        )

    def to_json(self) -> dict[str, Any]:
        """Counts, formats and problems (no row text) for a JSON report or a job's result."""
        return {
            "source_name": self.source_name,
            "source_kind": self.source_kind,
            "columns": self.columns,
            "mapping": self.mapping,
            "requested": self.requested,
            "detected": self.detected,
            "candidates": self.candidates,
            "format": self.format,
            "format_error": self.format_error,
            "records": self.records,
            "valid_rows": self.valid_rows,
            "invalid_rows": self.invalid_rows,
            "duplicates": self.duplicates,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "problems": [{"file": p.file, **p.to_json()} for p in self.problems],
        }


def preview_import(
    path: Path,
    fmt: str = "auto",
    columns: Iterable[str] | Mapping[str, str] | ColumnMap | None = None,
    *,
    sample_rows: int = SAMPLE_ROWS,
    eval_fraction: float = 0.1,
    seed: int = 42,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> ImportPreview:
    """Read ``path`` as an import would, and report what would be stored; store nothing.

    A format that does not fit (detection fails, or a plain text file forced to a chat format)
    is not an exception here: the preview carries the CLI's message in ``format_error`` and
    the columns found, so the wizard can offer a column mapping or another format.

    Raises:
        DatasetError: the file as a whole is unusable (missing, empty, a folder, binary, a BOM,
            not Parquet...), or a mapped column does not exist: the CLI's message.
        UsageError: a malformed mapping or option, or an unknown format name.
        ImportCancelled: ``cancel`` was set.
    """
    canonical.check_eval_fraction(eval_fraction)
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    opened = open_source(Path(path), columns)
    try:
        try:
            parsed: Parsed | None = parse(opened, fmt, progress=progress, cancel=cancel)
            error = None
        except (DatasetError, UsageError) as exc:
            parsed, error = None, str(exc)
    finally:
        opened.close()
    common: dict[str, Any] = {
        "source_name": opened.source_name,
        "source_kind": opened.source_kind,
        "columns": opened.columns,
        "mapping": dict(opened.mapping.roles),
        "requested": fmt,
        "detected": opened.detected,
        "candidates": opened.candidates,
        "eval_fraction": eval_fraction,
        "seed": seed,
    }
    if parsed is None:
        return ImportPreview(
            **common,
            format=None,
            format_error=error,
            sample=[],
            records=opened.rows_hint,
            valid_rows=0,
            duplicates=0,
            train_rows=0,
            eval_rows=0,
            problems=[],
        )
    kept, encoded, removed = canonical.dedupe(row for _, row in parsed.rows)
    splits = canonical.split(encoded, eval_fraction, seed) if encoded else []
    del kept, encoded
    return ImportPreview(
        **common,
        format=parsed.format,
        format_error=None,
        sample=parsed.rows[:sample_rows],
        records=parsed.records,
        valid_rows=len(parsed.rows),
        duplicates=removed,
        train_rows=splits.count("train"),
        eval_rows=splits.count("eval"),
        problems=parsed.problems,
        parsed=parsed,
    )


def store_import(
    vault: Vault,
    reg: Registry,
    preview: ImportPreview,
    name: str,
    *,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> tuple[DatasetVersionRow, Prepared]:
    """Store a preview's rows as the next version of dataset ``name``.

    Takes the workspace's writer lock for the store. The split uses the preview's
    ``eval_fraction`` and ``seed``.

    Raises:
        DatasetValidationError: the preview has problems and ``skip_invalid`` is off (the CLI's
            message), or no valid row is left.
        DatasetError: the preview has no readable rows (its ``format_error``).
        UsageError: an invalid dataset name.
        WorkspaceLockedError: another process is writing to the workspace.
        ImportCancelled: ``cancel`` was set; nothing was stored.
    """
    check_name(name, "dataset name")
    if preview.parsed is None:
        raise DatasetError(preview.format_error or f"{preview.source_name}: nothing to import")
    prepared = prepare_parsed(
        preview.parsed,
        skip_invalid=skip_invalid,
        eval_fraction=preview.eval_fraction,
        seed=preview.seed,
    )
    with vault.ws.writer("dataset import"):
        version = store_prepared(vault, reg, prepared, name, progress=progress, cancel=cancel)
    return version, prepared
