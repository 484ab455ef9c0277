"""Problems found in an input file, and the error that reports them.

A problem names the file, the line, the field and what is wrong, and never quotes the data
itself: the same text is stored with a version imported with ``--skip-invalid``, and the
registry must not hold plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.errors import DatasetError

SHOWN = 20
"""How many problems an error lists; the rest are counted."""
RECORDED = 100
"""How many skipped-row problems a version keeps in the registry."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row (or with the whole file when ``line`` is 0)."""

    file: str
    line: int
    field: str | None
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}: {what}{self.problem}"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "problem": self.problem}


class DatasetValidationError(DatasetError):
    """Rows of an input file are invalid; nothing was imported.

    ``str()`` is one line (what the CLI prints after ``error:``); :meth:`details` lists the
    first :data:`SHOWN` problems and counts the rest, for a terminal or a dialog.
    """

    def __init__(self, file: str, problems: list[Problem], hint: str) -> None:
        self.file = file
        self.problems = problems
        first = problems[0]
        rows = {p.line for p in problems}
        count = f"{len(rows)} invalid row{'s' if len(rows) != 1 else ''}"
        super().__init__(f"{file}: {count} (first: {first}); nothing was imported; {hint}")

    def details(self) -> list[str]:
        """The first problems, one per line, and how many more there are."""
        return problem_lines(self.problems)


def problem_lines(problems: list[Problem]) -> list[str]:
    """The first :data:`SHOWN` problems, one per line, then how many more there are."""
    lines = [str(p) for p in problems[:SHOWN]]
    rest = len(problems) - SHOWN
    if rest > 0:
        lines.append(f"... and {rest} more problem{'s' if rest != 1 else ''}")
    return lines


def file_error(file: str, problem: str, line: int = 0) -> DatasetError:
    """An error about the whole file (not skippable with ``--skip-invalid``)."""
    where = f"{file}:{line}" if line else file
    return DatasetError(f"{where}: {problem}; nothing was imported")


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
