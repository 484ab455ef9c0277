"""The audit log's hash chain.

Each row's hash covers its own fields and the previous row's hash, so editing, deleting,
inserting or reordering rows breaks the chain at the first row touched. Without a key the
hash is SHA-256: it catches accidents and naive edits, but whoever can write the file can
recompute it. Once the workspace has a vault the chain is keyed (HMAC-SHA256 with a key derived
from the master key): then nobody without the passphrase can forge a row. Rows written before
the vault existed stay unkeyed; the first keyed row commits to all of them.

A break, once found, stays in the log for good: writers refuse to extend a broken chain (their
rows would prove nothing) until a person records that they have seen it with an
``audit.acknowledge`` row (``appliance audit --acknowledge``). That row lists the problems it
acknowledges and is itself chained (and keyed), so only a passphrase holder can acknowledge, and
every later break is reported again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.registry.refs import dumps

GENESIS = "0" * 64
"""The ``prev_hash`` of the first row."""
ACKNOWLEDGE = "audit.acknowledge"
"""The action of a row that records a person's acknowledgement of earlier breaks."""


def row_hash(row: Mapping[str, Any], prev_hash: str, key: bytes | None) -> str:
    """The chained hash of one audit row (``details`` as the stored JSON text)."""
    message = dumps(
        [
            row["seq"],
            row["time"],
            row["user"],
            row["action"],
            row["object"],
            row["details"],
            int(row["keyed"]),
            prev_hash,
        ]
    ).encode()
    if key is not None:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


@dataclass
class ChainReport:
    """Result of checking the audit chain."""

    rows: int = 0
    keyed_rows: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    """``(seq, what is wrong)`` in chain order; the first is the first bad row."""
    acknowledged: list[tuple[int, str]] = field(default_factory=list)
    """Earlier problems that a later, intact ``audit.acknowledge`` row lists."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> int | None:
        return self.problems[0][0] if self.problems else None


def verify_chain(rows: Iterable[Mapping[str, Any]], key: bytes | None) -> ChainReport:
    """Check every row of the chain in ``seq`` order.

    Keyed rows are only checked when ``key`` is given (the caller refuses to verify a keyed
    chain without it). After the first problem the chain continues from the stored hash, so
    each later problem is reported once rather than every row after it.
    """
    report = ChainReport()
    expected_prev = GENESIS
    expected_seq = 1
    seen_keyed = False
    for row in rows:
        report.rows += 1
        seq = int(row["seq"])
        keyed = bool(row["keyed"])
        before = len(report.problems)
        if seq != expected_seq:
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
            report.problems.append((seq, f"row(s) {missing} before it are missing (deleted)"))
        if row["prev_hash"] != expected_prev:
            report.problems.append(
                (seq, "does not follow the row before it (a row was deleted, inserted or moved)")
            )
        if keyed:
            report.keyed_rows += 1
            seen_keyed = True
        elif seen_keyed:
            report.problems.append(
                (seq, "is unkeyed although earlier rows are keyed (written without the key)")
            )
        if keyed and key is None:
            pass  # the caller refuses this case; never silently accept it as checked
        elif not hmac.compare_digest(
            row_hash(row, str(row["prev_hash"]), key if keyed else None), str(row["hash"])
        ):
            report.problems.append((seq, "its content does not match its hash (it was edited)"))
        if row["action"] == ACKNOWLEDGE and len(report.problems) == before:
            _acknowledge(report, row)
        expected_prev = str(row["hash"])
        expected_seq = seq + 1
    return report


def _acknowledge(report: ChainReport, row: Mapping[str, Any]) -> None:
    """Move the problems an intact acknowledgement row lists from ``problems`` to
    ``acknowledged``."""
    try:
        listed = json.loads(str(row["details"])).get("problems", [])
        seen = {(int(seq), str(what)) for seq, what in listed}
    except (ValueError, TypeError, AttributeError):
        return
    report.acknowledged += [p for p in report.problems if p in seen]
    report.problems = [p for p in report.problems if p not in seen]
