"""How much disk the workspace takes, by kind of content (the Settings page's table).

A walk over the workspace folder counting bytes allocated to regular files (symlinks are not
followed: a model imported with ``--link`` costs only its link). It reads names and sizes only,
never contents, so it needs no passphrase; on a large workspace it takes a moment, so the
desktop app runs it on a background task.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.workspace import Workspace

KINDS: tuple[tuple[str, str], ...] = (
    ("datasets", "Datasets (encrypted)"),
    ("token-stats", "Token statistics cache"),
    ("models", "Base models"),
    ("runs", "Training runs and checkpoints"),
    ("adapters", "Adapters"),
    ("exports", "Exports kept in the workspace"),
    ("registry", "Registry (SQLite)"),
    ("logs", "Logs"),
    ("keys", "Key slots"),
    ("tmp", "Temporary files"),
    ("other", "Other"),
)
"""Every kind, in the order shown, with its label."""


@dataclass(frozen=True)
class Usage:
    """Bytes and files of one kind of content."""

    kind: str
    label: str
    bytes: int
    files: int


def _kind(home: Path, path: Path) -> str:
    parts = path.relative_to(home).parts
    top = parts[0]
    if top == "datasets" and len(parts) > 2 and parts[1] == "token-stats":
        return "token-stats"
    if top.startswith("registry.sqlite"):
        return "registry"
    if top in {k for k, _ in KINDS} and len(parts) > 1:
        return top
    return "other"


def _size(stat: os.stat_result) -> int:
    # Allocated blocks, not the apparent size: what the disk really gives up (sparse files).
    blocks = getattr(stat, "st_blocks", None)
    return blocks * 512 if blocks is not None else stat.st_size


def disk_usage(
    ws: Workspace, progress: Callable[[int, int, str], None] | None = None
) -> list[Usage]:
    """Bytes on disk of each kind of content, in :data:`KINDS` order (every kind listed).

    Args:
        progress: called as ``progress(files_seen, 0, "scanning")`` every 1000 files.
    """
    totals = {kind: [0, 0] for kind, _ in KINDS}
    home = ws.home
    seen = 0
    for folder, _dirs, files in os.walk(home, followlinks=False):
        base = Path(folder)
        for name in files:
            path = base / name
            try:
                stat = path.lstat()
            except OSError:
                continue  # removed meanwhile
            entry = totals[_kind(home, path)]
            entry[0] += _size(stat)
            entry[1] += 1
            seen += 1
            if progress is not None and seen % 1000 == 0:
                progress(seen, 0, "scanning")
    return [Usage(kind, label, *totals[kind]) for kind, label in KINDS]
