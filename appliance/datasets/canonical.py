"""Canonical rows: their bytes, duplicates, the frozen train/eval split, and statistics.

A stored dataset version is JSON Lines, one canonical row per line with its split::

    {"messages":[{"content":"...","role":"user"},...],"split":"train"}
    {"split":"eval","text":"..."}

(keys sorted, no spaces, UTF-8). The version's sha256 is of exactly these bytes, and
``dataset export`` writes exactly these bytes, so ``sha256sum`` of an export matches the
registry. Because the split is written into every row, it is frozen with the version: a later
change of the split rule cannot move rows between train and eval of an existing version.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import IntegrityError, UsageError

Row = dict[str, Any]
"""One dataset row as JSON gives it (canonical, or as read from a source file): the one
definition, which readers, stores, trainers and the desktop app's tables share."""
SPLITS = ("train", "eval")
MAX_EVAL_FRACTION = 0.5
MAX_SEED = 2**32 - 1


# One encoder for all rows: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def row_bytes(row: Row) -> bytes:
    """The canonical serialisation of one row (with or without its split)."""
    return _ENCODER.encode(row).encode()


def dedupe(rows: Iterable[Row]) -> tuple[list[Row], list[bytes], int]:
    """Rows without exact duplicates (the first occurrence stays), their canonical bytes, and
    how many were removed."""
    seen: set[bytes] = set()
    kept: list[Row] = []
    encoded: list[bytes] = []
    removed = 0
    for row in rows:
        data = row_bytes(row)
        key = hashlib.sha256(data).digest()
        if key in seen:
            removed += 1
        else:
            seen.add(key)
            kept.append(row)
            encoded.append(data)
    return kept, encoded, removed


def check_eval_fraction(value: float) -> float:
    if not 0 <= value <= MAX_EVAL_FRACTION:
        raise UsageError(
            f"--eval-fraction {value} is out of range; give a number from 0 to {MAX_EVAL_FRACTION}"
        )
    return value


def check_seed(value: int) -> int:
    """The split seed has the training seed's range (and fits the registry's integer column)."""
    if not 0 <= value <= MAX_SEED:
        raise UsageError(f"--seed {value} is out of range; give a number from 0 to {MAX_SEED}")
    return value


def split(encoded: Sequence[bytes], eval_fraction: float, seed: int) -> list[str]:
    """The split of each row (given as its canonical bytes): the ``round(n * fraction)`` rows
    whose keyed hash is smallest go to eval; at least one when the fraction is above 0 and
    there are two rows or more, and never all, so a single row always trains (one eval row from
    one row would leave nothing to train on).

    Ranking by ``sha256(seed, row)`` rather than by position makes the split independent of
    the order of rows in the file and reproducible from the seed alone.
    """
    check_eval_fraction(eval_fraction)
    n = len(encoded)
    wanted = round(n * eval_fraction)
    n_eval = min(max(wanted, 1), n - 1) if eval_fraction > 0 and n >= 2 else 0
    salt = f"appliance split v1 seed {seed}\n".encode()
    ranked = sorted(range(n), key=lambda i: hashlib.sha256(salt + encoded[i]).digest())
    eval_rows = set(ranked[:n_eval])
    return ["eval" if i in eval_rows else "train" for i in range(n)]


def with_split(encoded: bytes, split_name: str) -> bytes:
    """``row_bytes({**row, "split": split_name})`` from ``row_bytes(row)`` without encoding
    again: a canonical row has the one key "messages" (sorted before "split") or "text"
    (sorted after it)."""
    tag = b'"split":"' + split_name.encode() + b'"'
    if encoded.startswith(b'{"messages":'):
        return encoded[:-1] + b"," + tag + b"}"
    return b"{" + tag + b"," + encoded[1:]


def encode(encoded: Sequence[bytes], splits: Sequence[str]) -> bytes:
    """The stored plaintext of a version from its rows' canonical bytes and splits."""
    return b"".join(with_split(e, s) + b"\n" for e, s in zip(encoded, splits, strict=True))


def decode(data: bytes | bytearray, what: str) -> list[Row]:
    """Rows (with their ``split``) from a version's plaintext.

    Raises:
        IntegrityError: the plaintext is not canonical rows (it authenticated, so it was
            written wrongly; should never happen).
    """
    rows = []
    # bytearray.split gives bytearrays, which json.loads reads without another copy.
    lines: list[bytes | bytearray] = list(data.split(b"\n"))
    for number, line in enumerate(lines[:-1], start=1):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IntegrityError(f"{what}: stored row {number} is not JSON") from None
        if not isinstance(row, dict) or row.get("split") not in SPLITS:
            raise IntegrityError(f"{what}: stored row {number} is not a canonical row")
        rows.append(row)
    return rows


def content(row: Row) -> Row:
    """A row without its split: what was imported."""
    return {k: v for k, v in row.items() if k != "split"}


def row_chars(row: Row) -> int:
    if "text" in row:
        return len(row["text"])
    return sum(len(m["content"]) for m in row["messages"])


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def summary(values: Iterable[int]) -> dict[str, float]:
    """min, median, p95, max of a list of counts."""
    ordered = sorted(values)
    if not ordered:
        return {"min": 0, "median": 0, "p95": 0, "max": 0}
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": percentile(ordered, 0.95),
        "max": ordered[-1],
    }


@dataclass(frozen=True)
class Stats:
    """Statistics of a version; numbers only, never text from the rows."""

    chars: int
    detail: dict[str, Any]


def stats(rows: Sequence[Row]) -> Stats:
    """Character, turn and role counts of canonical rows."""
    chars = [row_chars(r) for r in rows]
    detail: dict[str, Any] = {"chars_per_example": summary(chars)}
    chat = [r for r in rows if "messages" in r]
    if chat:
        roles: Counter[str] = Counter(m["role"] for r in chat for m in r["messages"])
        detail["turns_per_example"] = summary(len(r["messages"]) for r in chat)
        detail["roles"] = dict(sorted(roles.items()))
        detail["with_system_prompt"] = sum(1 for r in chat if r["messages"][0]["role"] == "system")
    return Stats(sum(chars), detail)
