"""Reading input files into records: JSONL, a JSON array, CSV/TSV and plain text.

Everything happens in memory: the file is read once as bytes and nothing derived from it is
written anywhere. File-level problems (empty, a byte order mark, binary content, a broken
JSON array or CSV quoting) stop the import at once; row-level problems are collected with
their line numbers.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.datasets.problems import Problem, file_error, json_type
from appliance.errors import DatasetError
from appliance.fsutil import FileTooLargeError, SpecialFileError, read_regular_file
from appliance.units import format_bytes

MAX_ROW_BYTES = 1024 * 1024
"""The largest line (JSONL), record (CSV) or document (text) accepted: far beyond any
model's context, so anything larger is a mistake (a whole file on one line, a binary blob)."""
MAX_FILE_BYTES = 1024**3
"""The largest input file accepted (1 GiB): an import is validated in memory (several times
the file's size at its peak), and 1 GiB of text is about 250 million tokens, far more than a
LoRA fine-tune uses. Checked before anything is read; split a larger file into versions."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects in one example; real rows need four levels."""

SOURCE_KINDS = ("jsonl", "json", "csv", "tsv", "text")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
_BINARY_MAGIC = [
    (b"\x1f\x8b", "gzip-compressed; decompress it first"),
    (b"PK\x03\x04", "a ZIP archive (or an Excel/Word file); export it as JSONL or CSV"),
    (b"PAR1", "a Parquet file; convert it to JSONL"),
    (b"%PDF", "a PDF; extract its text to a .txt file first"),
    (b"SQLite format 3\x00", "an SQLite database; export the rows as JSONL"),
    (b"\xfd7zXZ\x00", "xz-compressed; decompress it first"),
    (b"BZh", "bzip2-compressed; decompress it first"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed; decompress it first"),
]
_BOMS = [
    (b"\xef\xbb\xbf", "starts with a UTF-8 byte order mark (BOM); save it as UTF-8 without BOM"),
    (b"\xff\xfe\x00\x00", "is UTF-32 encoded (it starts with a BOM); save it as UTF-8"),
    (b"\xff\xfe", "is UTF-16 encoded (it starts with a BOM); save it as UTF-8"),
    (b"\xfe\xff", "is UTF-16 encoded (it starts with a BOM); save it as UTF-8"),
]
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


@dataclass
class Record:
    """One example as found in the file, before normalisation."""

    line: int
    """1-based line where the example starts."""
    data: dict[str, Any]


@dataclass
class Source:
    """All records of a file and the rows that could not even be read."""

    file: str
    kind: str
    """One of :data:`SOURCE_KINDS`."""
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    fields: list[str] | None = None
    """CSV header names (None for other kinds)."""


def source_kind(path: Path, head: bytes) -> str:
    """The container kind from the extension, or from the first byte when it is unknown."""
    kind = _EXTENSIONS.get(path.suffix.lower())
    if kind == "json" and head.lstrip()[:1] == b"{":
        return "jsonl"  # a .json file holding one object per line
    if kind is not None:
        return kind
    first = head.lstrip()[:1]
    if first == b"[":
        return "json"
    if first == b"{":
        return "jsonl"
    raise DatasetError(
        f"{path.name}: cannot tell the file type from '{path.suffix or '(no extension)'}'; "
        "name it .jsonl, .json, .csv, .tsv or .txt"
    )


def read_source(path: Path) -> Source:
    """Read and split ``path`` into records.

    Raises:
        DatasetError: the file is missing, empty, binary, has a BOM, or is broken as a whole.
    """
    name = path.name
    try:
        raw = read_regular_file(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file; check the path") from None
    except SpecialFileError as exc:
        raise DatasetError(
            f"{path} is {exc.strerror}; give the path of a data file (.jsonl, .json, .csv, "
            ".tsv or .txt)"
        ) from None
    except FileTooLargeError as exc:
        raise DatasetError(
            f"{path} is {exc.size:,} bytes ({format_bytes(exc.size)}), over the "
            f"{format_bytes(MAX_FILE_BYTES)} limit of one import; split it into smaller files "
            "(each becomes a version)"
        ) from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    check_bytes(name, raw)
    kind = source_kind(path, raw[:64])
    if kind == "jsonl":
        return _read_jsonl(name, raw)
    text = _decode_whole(name, raw)
    if kind == "json":
        return _read_json_array(name, text)
    if kind in ("csv", "tsv"):
        return _read_csv(name, text, "\t" if kind == "tsv" else ",")
    return _read_text(name, text)


def check_bytes(name: str, raw: bytes) -> None:
    """File-level checks on the raw bytes: empty, BOM, known binary formats, NUL bytes."""
    if not raw.strip():
        raise file_error(name, "the file is empty; export your data to it first")
    for bom, problem in _BOMS:
        if raw.startswith(bom):
            raise file_error(name, problem, line=1)
    for magic, what in _BINARY_MAGIC:
        if raw.startswith(magic):
            raise file_error(name, f"binary content: this is {what}", line=1)
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise file_error(name, "binary content (a NUL byte); this is not a text file", line=line)


def _decode_whole(name: str, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise file_error(
            name,
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02X} at column {column}); save the file "
            "as UTF-8",
            line=line,
        ) from None
    return text.replace("\r\n", "\n")


def _lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(raw.split(b"\n"), start=1):
        yield number, line[:-1] if line.endswith(b"\r") else line


def _read_jsonl(name: str, raw: bytes) -> Source:
    src = Source(name, "jsonl")
    for number, line in _lines(raw):
        if not line.strip():
            continue
        if len(line) > MAX_ROW_BYTES:
            src.problems.append(
                Problem(name, number, None, f"line of {len(line):,} bytes, over the 1 MiB limit")
            )
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            src.problems.append(
                Problem(
                    name,
                    number,
                    None,
                    f"not valid UTF-8 (byte 0x{line[exc.start]:02X} at column {exc.start + 1}); "
                    "save the file as UTF-8",
                )
            )
            continue
        try:
            value = loads_row(text)
        except json.JSONDecodeError as exc:
            src.problems.append(
                Problem(name, number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            )
            continue
        except NestingError as exc:
            src.problems.append(Problem(name, number, None, str(exc)))
            continue
        _add(src, number, value)
    return src


class NestingError(ValueError):
    """A JSON value nested deeper than :data:`MAX_JSON_DEPTH` (a row problem)."""

    def __init__(self, depth: int | None = None) -> None:
        found = f"{depth:,} levels" if depth is not None else "too many levels"
        super().__init__(
            f"JSON nested {found} deep, over the limit of {MAX_JSON_DEPTH}; an example needs "
            "only a few"
        )


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def excess_depth(text: str) -> int | None:
    """How deeply a JSON text's arrays and objects nest, when that is over the limit; else None.

    Counted without recursion (brackets inside strings ignored), so it works at any depth; a
    row with fewer brackets than the limit in all is passed at the cost of two counts.
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return None
    depth = deepest = 0
    for match in _BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest if deepest > MAX_JSON_DEPTH else None


def loads_row(text: str) -> Any:
    """``json.loads`` for one example, refusing nesting deeper than :data:`MAX_JSON_DEPTH`.

    Python's decoder recurses once per level and raises RecursionError (or, with a raised
    recursion limit, could exhaust the C stack) on hostile input; checking the depth first
    makes such a row an ordinary row problem.

    Raises:
        json.JSONDecodeError: not JSON.
        NestingError: nested too deeply.
    """
    depth = excess_depth(text)
    if depth is not None:
        raise NestingError(depth)
    try:
        return json.loads(text)
    except RecursionError:  # only with a recursion limit far below the default
        raise NestingError() from None


def _add(src: Source, line: int, value: Any) -> None:
    if isinstance(value, dict):
        src.records.append(Record(line, value))
    else:
        src.problems.append(
            Problem(src.file, line, None, f"expected a JSON object, found {json_type(value)}")
        )


def _read_json_array(name: str, text: str) -> Source:
    """Walk the array element by element, so each example keeps its line number."""
    src = Source(name, "json")
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")

    def skip(pos: int) -> int:
        match = ws.match(text, pos)
        return match.end() if match else pos

    pos = skip(0)
    if text[pos : pos + 1] != "[":
        raise file_error(name, "expected a JSON array of examples ([{...}, {...}])", line=1)
    pos = skip(pos + 1)
    line, counted = 1, 0
    if text[pos : pos + 1] == "]":
        raise file_error(name, "the JSON array is empty", line=1)
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
            depth = excess_depth(text[pos:end])
        except json.JSONDecodeError as exc:
            raise file_error(
                name, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno
            ) from None
        except RecursionError:
            # Too deep for the decoder: step over this example and report it like any other.
            found = _value_end(text, pos)
            if found is None:
                raise file_error(name, "invalid JSON: unbalanced brackets", line=line) from None
            value, end = None, found
            depth = excess_depth(text[pos:end]) or MAX_JSON_DEPTH + 1
        if end - pos > MAX_ROW_BYTES:
            src.problems.append(Problem(name, line, None, "example over the 1 MiB limit"))
        elif depth is not None:
            src.problems.append(Problem(name, line, None, str(NestingError(depth))))
        else:
            _add(src, line, value)
        pos = skip(end)
        token = text[pos : pos + 1]
        if token == ",":
            pos = skip(pos + 1)
        elif token == "]":
            if text[skip(pos + 1) :]:
                raise file_error(
                    name, "unexpected text after the JSON array", line=text.count("\n", 0, pos) + 1
                )
            return src
        else:
            raise file_error(
                name,
                "invalid JSON: expected ',' or ']' after an example",
                line=text.count("\n", 0, pos) + 1,
            )


def _value_end(text: str, pos: int) -> int | None:
    """Where the array or object starting at ``pos`` ends, found without recursion.

    Used only when the decoder gave up on nesting, to step over that one example; None when the
    brackets never balance (then the file as a whole is broken).
    """
    depth = 0
    index = pos
    length = len(text)
    while index < length:
        char = text[index]
        if char == '"':
            match = _JSON_STRING.match(text, index)
            if match is None:
                return None
            index = match.end()
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None


# The default (128 KiB) is below the row limit.
csv.field_size_limit(MAX_ROW_BYTES)


def _read_csv(name: str, text: str, delimiter: str) -> Source:
    src = Source(name, "tsv" if delimiter == "\t" else "csv")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise file_error(name, "no header row; the first row must name the fields", line=1)
        names = [h.strip() for h in header]
        if len(set(names)) != len(names) or "" in names:
            raise file_error(name, "the header row has empty or repeated field names", line=1)
        src.fields = names
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(names):
                src.problems.append(
                    Problem(
                        name,
                        line,
                        None,
                        f"{len(cells)} cell{'s' if len(cells) != 1 else ''}, but the header has "
                        f"{len(names)}",
                    )
                )
                continue
            if sum(len(c) for c in cells) > MAX_ROW_BYTES:
                src.problems.append(Problem(name, line, None, "record over the 1 MiB limit"))
                continue
            src.records.append(
                Record(
                    line, {k: v.replace("\r\n", "\n") for k, v in zip(names, cells, strict=True)}
                )
            )
    except csv.Error as exc:
        raise file_error(
            name, f"broken CSV ({exc}); check the quoting", line=reader.line_num
        ) from None
    return src


def _read_text(name: str, text: str) -> Source:
    """A plain text file: documents separated by blank lines."""
    src = Source(name, "text")
    pos, line, counted = 0, 1, 0
    for match in [*_BLANK_LINES.finditer(text), None]:
        end = match.start() if match else len(text)
        doc = text[pos:end]
        stripped = doc.strip("\n")
        line += text.count("\n", counted, pos)
        counted = pos
        if stripped.strip():
            start_line = line + len(doc) - len(doc.lstrip("\n"))
            if len(stripped.encode("utf-8")) > MAX_ROW_BYTES:
                src.problems.append(
                    Problem(name, start_line, None, "document over the 1 MiB limit")
                )
            else:
                src.records.append(Record(start_line, {"text": stripped}))
        pos = match.end() if match else len(text)
    return src
