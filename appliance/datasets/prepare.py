"""From an input file to the plaintext of a new version, entirely in memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.datasets import canonical
from appliance.datasets.canonical import Row
from appliance.datasets.columns import ColumnMap
from appliance.datasets.control import CancelFlag
from appliance.datasets.formats import FORMATS, kind_of
from appliance.datasets.problems import RECORDED, DatasetValidationError, Problem
from appliance.datasets.reading import Parsed, parse_file
from appliance.errors import DatasetError, UsageError
from appliance.progress import Progress


@dataclass
class Prepared:
    """A validated, normalised, deduplicated and split dataset, ready to encrypt."""

    source_name: str
    format: str
    kind: str
    rows: list[Row]
    """Canonical rows (without split), duplicates removed, in file order."""
    splits: list[str]
    duplicates_removed: int
    skipped: list[Problem]
    eval_fraction: float
    seed: int
    plaintext: bytes = field(repr=False)
    sha256: str = ""

    @property
    def skipped_rows(self) -> int:
        return len({p.line for p in self.skipped})

    def registry_fields(self) -> dict[str, Any]:
        """The registry columns this version fills (without object id, path, file hash)."""
        st = canonical.stats(self.rows)
        return {
            "sha256": self.sha256,
            "kind": self.kind,
            "format": self.format,
            "source_name": self.source_name,
            "rows": len(self.rows),
            "train_rows": self.splits.count("train"),
            "eval_rows": self.splits.count("eval"),
            "duplicates_removed": self.duplicates_removed,
            "skipped_rows": self.skipped_rows,
            "skipped_detail": [p.to_json() for p in self.skipped[:RECORDED]],
            "chars": st.chars,
            "eval_fraction": self.eval_fraction,
            "seed": self.seed,
            "stats": {**st.detail, "skipped_problems": len(self.skipped)},
        }


def prepare(
    path: Path,
    fmt: str = "auto",
    *,
    skip_invalid: bool = False,
    eval_fraction: float = 0.1,
    seed: int = 42,
    columns: Iterable[str] | Mapping[str, str] | ColumnMap | None = None,
    progress: Progress | None = None,
    cancel: CancelFlag | None = None,
) -> Prepared:
    """Read, validate, normalise, deduplicate and split ``path``.

    Args:
        columns: role -> column mapping (``["output=answer"]``, the CLI's ``--map``).
        progress, cancel: see :mod:`appliance.datasets.control`.

    Raises:
        DatasetValidationError: rows are invalid and ``skip_invalid`` is off (or nothing valid
            is left); its :meth:`~DatasetValidationError.details` lists them.
        DatasetError: the file as a whole is unusable.
        UsageError: an option is out of range.
        ImportCancelled: ``cancel`` was set.
    """
    canonical.check_eval_fraction(eval_fraction)
    canonical.check_seed(seed)
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    parsed = parse_file(Path(path), fmt, columns, progress=progress, cancel=cancel)
    return prepare_parsed(parsed, skip_invalid=skip_invalid, eval_fraction=eval_fraction, seed=seed)


def prepare_parsed(
    parsed: Parsed, *, skip_invalid: bool = False, eval_fraction: float = 0.1, seed: int = 42
) -> Prepared:
    """Check, deduplicate and split rows already read (see :func:`prepare`)."""
    canonical.check_eval_fraction(eval_fraction)
    numbered, problems = parsed.rows, parsed.problems
    if problems and not skip_invalid:
        raise DatasetValidationError(
            parsed.source_name,
            problems,
            "fix them, or pass --skip-invalid to import the valid rows only",
        )
    if not numbered:
        if problems:
            raise DatasetValidationError(
                parsed.source_name, problems, "no valid row is left to import"
            )
        raise DatasetError(f"{parsed.source_name}: no examples found; nothing was imported")
    rows, encoded, removed = canonical.dedupe(row for _, row in numbered)
    splits = canonical.split(encoded, eval_fraction, seed)
    plaintext = canonical.encode(encoded, splits)
    del encoded
    return Prepared(
        source_name=parsed.source_name,
        format=parsed.format,
        kind=kind_of(parsed.format),
        rows=rows,
        splits=splits,
        duplicates_removed=removed,
        skipped=problems,
        eval_fraction=eval_fraction,
        seed=seed,
        plaintext=plaintext,
        sha256=hashlib.sha256(plaintext).hexdigest(),
    )
