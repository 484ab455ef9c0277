"""Column mapping: which column of a file plays which role (field) of a format.

A spreadsheet rarely names its columns ``instruction`` and ``output``; ``--map
instruction=question --map output=answer`` (or the wizard's mapping) says so instead of making
the user rename them. The mapping renames the columns of every record before the format is
detected and the rows are normalised, so every rule and message of the formats applies
unchanged; only the problems are named back after the file's own columns ("field 'answer':
missing"), so the user can find them in the file.

Works for every tabular or JSON source (CSV, TSV, Parquet, JSONL, a JSON array: for JSON the
"columns" are the top-level keys); a plain text file has no columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from appliance.datasets.problems import Problem
from appliance.datasets.sources import Record
from appliance.errors import DatasetError, UsageError

ROLES: dict[str, str] = {
    "instruction": "alpaca: the user's request",
    "input": "alpaca: optional context appended to the instruction",
    "output": "alpaca: the assistant's answer",
    "system": "alpaca, sharegpt: optional system message",
    "prompt": "completion: the prompt",
    "completion": "completion: the answer to the prompt",
    "text": "text: a whole document",
    "messages": "messages: a JSON array of {role, content} turns",
    "conversations": "sharegpt: a JSON array of {from, value} turns",
}
"""Every role a column can be mapped to, with what it holds (for help texts and the wizard)."""

FORMAT_ROLES: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system"),
    "sharegpt": ("conversations", "system"),
    "messages": ("messages",),
    "completion": ("prompt", "completion"),
    "text": ("text",),
}
"""The roles each format reads (the others are ignored): what a Parquet reader needs."""

REQUIRED_ROLES: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "completion": ("prompt", "completion"),
    "text": ("text",),
}
"""The roles whose presence makes a format a candidate, in detection order."""


@dataclass(frozen=True)
class ColumnMap:
    """Role -> column of the file. Empty: the columns are named after the roles already."""

    roles: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.roles)

    @property
    def columns(self) -> dict[str, str]:
        """Column -> role."""
        return {column: role for role, column in self.roles.items()}

    def column_of(self, role: str) -> str:
        """The file's column that plays ``role`` (the role's own name when unmapped)."""
        return self.roles.get(role, role)

    def check_columns(self, file: str, found: Iterable[str] | None) -> None:
        """Refuse a mapping to a column the file does not have (when its columns are known).

        Raises:
            DatasetError: "notes.csv: --map output=answer: there is no column 'answer' ...".
        """
        if found is None:
            return
        names = list(found)
        for role, column in self.roles.items():
            if column not in names:
                listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
                raise DatasetError(
                    f"{file}: --map {role}={column}: there is no column {column!r} (columns: "
                    f"{listed}); nothing was imported"
                )

    def rename_fields(self, found: Iterable[str]) -> list[str]:
        """The column names as the formats will see them."""
        columns = self.columns
        renamed = [columns.get(name, name) for name in found if name not in self.roles]
        # A mapped column replaces a column already named after its role.
        return list(dict.fromkeys(renamed))

    def apply(self, records: Iterable[Record]) -> list[Record]:
        """Records whose mapped columns carry their roles' names."""
        if not self.roles:
            return list(records)
        columns = self.columns
        out = []
        for record in records:
            data = {}
            for key, value in record.data.items():
                if key in columns:
                    continue
                if key not in self.roles:
                    data[key] = value
            for column, role in columns.items():
                if column in record.data:
                    data[role] = record.data[column]
            out.append(Record(record.line, data))
        return out

    def name_back(self, problems: Iterable[Problem]) -> list[Problem]:
        """Problems whose field names the file's column rather than the role."""
        if not self.roles:
            return list(problems)
        out = []
        for p in problems:
            name = p.field
            if name is not None:
                head = name.split(".", 1)[0].split("[", 1)[0]
                if head in self.roles:
                    name = self.roles[head] + name[len(head) :]
            out.append(Problem(p.file, p.line, name, p.problem))
        return out


def parse_mapping(options: Iterable[str] | Mapping[str, str] | ColumnMap | None) -> ColumnMap:
    """A :class:`ColumnMap` from ``["role=column", ...]`` (the CLI's ``--map``) or a dict.

    Raises:
        UsageError: a malformed item, an unknown role, or a role or column mapped twice.
    """
    if options is None:
        return ColumnMap()
    if isinstance(options, ColumnMap):
        return options
    pairs: list[tuple[str, str]]
    if isinstance(options, Mapping):
        pairs = [(str(k), str(v)) for k, v in options.items()]
    else:
        pairs = []
        for item in options:
            role, sep, column = item.partition("=")
            if not sep or not role.strip() or not column.strip():
                raise UsageError(
                    f"--map {item!r}: write ROLE=COLUMN, e.g. --map output=answer (roles: "
                    f"{', '.join(ROLES)})"
                )
            pairs.append((role, column))
    roles: dict[str, str] = {}
    for raw_role, raw_column in pairs:
        role, column = raw_role.strip(), raw_column.strip()
        if role not in ROLES:
            raise UsageError(
                f"--map {role}={column}: unknown role {role!r}; the roles are: {', '.join(ROLES)}"
            )
        if role in roles:
            raise UsageError(f"--map {role}=...: the role {role!r} is mapped twice")
        if column in roles.values():
            raise UsageError(f"--map ...={column}: the column {column!r} is mapped twice")
        roles[role] = column
    return ColumnMap(roles)


def candidate_formats(fields: Iterable[str]) -> list[str]:
    """The formats whose required fields are all present, in detection order."""
    keys = set(fields)
    return [fmt for fmt, needed in REQUIRED_ROLES.items() if set(needed) <= keys]
