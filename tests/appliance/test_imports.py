"""Import rules: the core never imports Qt; the GUI never imports the training stack; no
import opens a socket."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

_WALK = """
import importlib, json, pkgutil, sys
events = []
def hook(event, args):
    if event.startswith("socket.") and event != "socket.__new__":
        events.append(event)
sys.addaudithook(hook)
def walk(name):
    pkg = importlib.import_module(name)
    mods = [name]
    for info in pkgutil.walk_packages(pkg.__path__, name + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        mods.append(info.name)
    return mods
"""


def _run(body: str) -> dict[str, Any]:
    code = _WALK + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_never_imports_qt() -> None:
    result = _run(
        """
        mods = walk("appliance")
        qt = ("PySide6", "gui", "pyqtgraph", "shiboken6")
        bad = sorted(m for m in sys.modules if m.split(".")[0] in qt)
        print(json.dumps({"mods": mods, "bad": bad, "sockets": events}))
        """
    )
    assert "appliance.cli" in result["mods"]
    assert result["bad"] == []
    assert result["sockets"] == []


def test_gui_never_imports_training_stack() -> None:
    result = _run(
        """
        mods = walk("gui")
        heavy = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
        bad = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        print(json.dumps({"mods": mods, "bad": bad, "sockets": events}))
        """
    )
    assert "gui.main_window" in result["mods"]
    assert result["bad"] == []
    assert result["sockets"] == []


def test_import_linter_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run(
        [str(lint_imports), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = len(config["tool"]["importlinter"]["contracts"])
    assert contracts >= 5  # core/Qt, desktop/training stack, gui/core, layers, training child
    assert f"Contracts: {contracts} kept, 0 broken" in proc.stdout
