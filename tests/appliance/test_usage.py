"""Disk usage of a workspace by kind, against sizes counted independently."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.usage import KINDS, disk_usage
from appliance.workspace import Workspace


def _allocated(path: Path) -> int:
    return path.lstat().st_blocks * 512


def test_every_kind_is_listed_and_counted(ws: Workspace, tmp_path: Path) -> None:
    files = {
        "datasets": ws.datasets_dir / "a.enc",
        "token-stats": ws.datasets_dir / "token-stats" / "a.b.enc",
        "models": ws.models_dir / "tiny" / "files" / "model.safetensors",
        "adapters": ws.adapters_dir / "legal" / "1" / "adapter.enc",
        "logs": ws.logs_dir / "run.log",
    }
    for i, path in enumerate(files.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(5000 * (i + 1)))
    (ws.home / "registry.sqlite-wal").write_bytes(b"w" * 100)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1_000_000)
    (ws.models_dir / "linked").symlink_to(outside)  # a link costs its link, not its target

    usage = {u.kind: u for u in disk_usage(ws)}
    assert list(usage) == [kind for kind, _ in KINDS]
    link = ws.models_dir / "linked"
    for kind, path in files.items():
        extra = [link] if kind == "models" else []
        assert usage[kind].files == 1 + len(extra), kind
        assert usage[kind].bytes == sum(_allocated(p) for p in [path, *extra]), kind
    assert usage["registry"].files == 1
    assert usage["other"].files == 1  # FORMAT
    assert usage["models"].bytes < 1_000_000
    assert usage["runs"].files == usage["runs"].bytes == 0
    every = [p for p in ws.home.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sum(u.files for u in usage.values()) == len(every) + 1  # and the symlink itself
