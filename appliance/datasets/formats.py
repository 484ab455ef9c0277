"""The five input formats and their normalisation to one canonical form.

Canonical rows are either ``{"messages": [{"role": ..., "content": ...}, ...]}`` (kind
"chat") or ``{"text": ...}`` (kind "text"). Normalisation keeps only the role and content of
each turn, turns Windows line endings into ``\\n`` and trims whitespace around each content;
nothing else about the text changes. Unknown extra fields (ids, sources, scores) are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from appliance.datasets.canonical import Row
from appliance.datasets.problems import Problem, json_type
from appliance.datasets.sources import NestingError, Record, Source, loads_row
from appliance.errors import DatasetError, UsageError

FORMATS = ("alpaca", "sharegpt", "messages", "completion", "text")
KINDS = {"alpaca": "chat", "sharegpt": "chat", "messages": "chat", "completion": "chat"}
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
}


def kind_of(fmt: str) -> str:
    """ "chat" or "text"."""
    return KINDS.get(fmt, "text")


def detect_format(src: Source) -> str:
    """The format of a source from the fields of its first readable example.

    Raises:
        DatasetError: no example names the fields of any known format.
    """
    if src.kind == "text":
        return "text"
    fields: Iterable[str] = src.fields if src.fields is not None else ()
    line = 1
    if src.fields is None:
        if not src.records:
            return "text"  # nothing readable; the row problems will say why
        fields, line = src.records[0].data.keys(), src.records[0].line
    keys = set(fields)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "completion"
    if "text" in keys:
        return "text"
    # Field names come from the file: escaped, so a lone surrogate cannot break the message.
    found = ", ".join(k.encode("utf-8", "backslashreplace").decode() for k in sorted(keys)[:8])
    found = found or "none"
    raise DatasetError(
        f"{src.file}:{line}: cannot tell the format from its fields (found: {found}); pass "
        "--format alpaca|sharegpt|messages|completion|text, or rename the fields"
    )


def check_format_fits(src: Source, fmt: str) -> None:
    """A plain text file can only be raw text."""
    if src.kind == "text" and fmt != "text":
        raise UsageError(
            f"{src.file} is a plain text file; it can only be imported with --format text"
        )


class _Row:
    """Collects the problems of one record while its fields are read."""

    def __init__(self, file: str, record: Record) -> None:
        self.file, self.line, self.data = file, record.line, record.data
        self.problems: list[Problem] = []

    def fail(self, field: str | None, problem: str) -> None:
        self.problems.append(Problem(self.file, self.line, field, problem))

    def text(self, container: dict[str, Any], key: str, path: str, required: bool = True) -> str:
        """A string field, normalised; '' when optional and absent (or null)."""
        if key not in container or (container[key] is None and not required):
            if required:
                self.fail(path, "missing")
            return ""
        value = container[key]
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {json_type(value)}")
            return ""
        surrogate = lone_surrogate(value)
        if surrogate is not None:
            self.fail(
                path,
                f"not valid Unicode: a lone surrogate escape (\\u{ord(value[surrogate]):04x}) "
                f"at character {surrogate + 1}; only whole characters can be stored",
            )
            return ""
        return value.replace("\r\n", "\n").strip()

    def nonempty(self, container: dict[str, Any], key: str, path: str, what: str) -> str:
        known = len(self.problems)
        value = self.text(container, key, path)
        if len(self.problems) == known and key in container and not value:
            self.fail(path, f"empty {what}")
        return value

    def json_cell(self, key: str) -> Any:
        """CSV cells holding a conversation are JSON text; other sources hold it parsed."""
        value = self.data.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                return loads_row(value)
            except json.JSONDecodeError as exc:
                self.fail(key, f"invalid JSON in the cell: {exc.msg} (column {exc.colno})")
                return None
            except NestingError as exc:
                self.fail(key, f"in the cell: {exc}")
                return None
        return value


def lone_surrogate(value: str) -> int | None:
    """Index of the first lone surrogate in ``value`` (from a JSON ``\\ud800`` escape), if any.

    JSON may escape half of a UTF-16 pair on its own; Python keeps it as a code point that
    UTF-8 cannot encode, so such text can be neither stored nor tokenized.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


Turn = tuple[str, str, str, str]
"""(role, content, path of the role, path of the content) of one turn."""


def _conversation(row: _Row, turns: list[Turn], field: str) -> Row | None:
    """Check the shape of a conversation and build the row."""
    if row.problems:
        return None
    if not turns:
        row.fail(field, "empty conversation: it needs a user turn and an assistant turn")
        return None
    expected = "user"
    for index, (role, content, role_path, path) in enumerate(turns):
        if role == "system":
            if index != 0:
                row.fail(role_path, "a system message may only come first")
            elif not content:
                row.fail(path, "empty system message")
            continue
        if not content:
            row.fail(path, f"empty {role} turn")
        if role != expected:
            row.fail(
                role_path,
                f"two {role} turns in a row (turns must alternate user, assistant, ...)"
                if index > 0 and turns[index - 1][0] == role
                else "the conversation must start with a user turn (after an optional system "
                "message)",
            )
            return None
        expected = "assistant" if role == "user" else "user"
    if turns[-1][0] != "assistant":
        row.fail(field, "the conversation does not end with an assistant turn")
    if row.problems:
        return None
    return {"messages": [{"role": r, "content": c} for r, c, _, _ in turns]}


def _alpaca(row: _Row) -> Row | None:
    instruction = row.nonempty(row.data, "instruction", "instruction", "instruction")
    extra = row.text(row.data, "input", "input", required=False)
    output = row.nonempty(row.data, "output", "output", "assistant turn (output)")
    system = row.text(row.data, "system", "system", required=False)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    turns = [
        ("user", user, "instruction", "instruction"),
        ("assistant", output, "output", "output"),
    ]
    if system:
        turns.insert(0, ("system", system, "system", "system"))
    return _conversation(row, turns, "output")


def _turns(
    row: _Row, field: str, role_key: str, text_key: str, roles: Callable[[str], str | None]
) -> list[Turn]:
    value = row.json_cell(field)
    if row.problems:
        return []
    if value is None and field not in row.data:
        row.fail(field, "missing")
        return []
    if not isinstance(value, list):
        row.fail(field, f"must be an array of turns, not {json_type(value)}")
        return []
    turns = []
    for index, turn in enumerate(value):
        path = f"{field}[{index}]"
        if not isinstance(turn, dict):
            row.fail(path, f"must be an object, not {json_type(turn)}")
            continue
        if role_key not in turn:
            row.fail(f"{path}.{role_key}", "missing role")
            continue
        raw_role = turn[role_key]
        role = roles(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            row.fail(f"{path}.{role_key}", "unknown role (expected system, user or assistant)")
            continue
        content = row.text(turn, text_key, f"{path}.{text_key}")
        turns.append((role, content, f"{path}.{role_key}", f"{path}.{text_key}"))
    return turns


def _messages(row: _Row) -> Row | None:
    turns = _turns(row, "messages", "role", "content", lambda r: r if r in ROLES else None)
    return _conversation(row, turns, "messages")


def _sharegpt(row: _Row) -> Row | None:
    turns = _turns(row, "conversations", "from", "value", lambda r: SHAREGPT_ROLES.get(r.lower()))
    system = row.text(row.data, "system", "system", required=False)
    if system and not (turns and turns[0][0] == "system"):
        turns.insert(0, ("system", system, "system", "system"))
    return _conversation(row, turns, "conversations")


def _completion(row: _Row) -> Row | None:
    prompt = row.nonempty(row.data, "prompt", "prompt", "prompt")
    completion = row.nonempty(row.data, "completion", "completion", "completion")
    return _conversation(
        row,
        [
            ("user", prompt, "prompt", "prompt"),
            ("assistant", completion, "completion", "completion"),
        ],
        "completion",
    )


def _text(row: _Row) -> Row | None:
    text = row.nonempty(row.data, "text", "text", "text")
    return None if row.problems else {"text": text}


_NORMALISERS: dict[str, Callable[[_Row], Row | None]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "messages": _messages,
    "completion": _completion,
    "text": _text,
}


def normalise_rows(src: Source, fmt: str) -> tuple[list[tuple[int, Row]], list[Problem]]:
    """Canonical rows with their line numbers, and every problem found (file order)."""
    if fmt not in _NORMALISERS:
        raise UsageError(f"unknown format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    check_format_fits(src, fmt)
    rows: list[tuple[int, Row]] = []
    problems = list(src.problems)
    for record in src.records:
        row = _Row(src.file, record)
        result = _NORMALISERS[fmt](row)
        if result is None or row.problems:
            problems.extend(row.problems)
        else:
            rows.append((record.line, result))
    problems.sort(key=lambda p: p.line)
    return rows, problems
