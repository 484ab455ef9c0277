"""The PySide6 reference fault (gui/pyside_fix.py): a busy window must not abort the process."""

from __future__ import annotations

import subprocess
import sys

EMITS = """
import sys
{setup}
from PySide6.QtCore import QObject, Signal

class Source(QObject):
    changed = Signal(str)

source = Source()
for _ in range(100_000):
    source.changed.emit("x")  # True
    source.setObjectName("x")  # None
print("survived")
"""


def _emit_a_lot(setup: str) -> subprocess.CompletedProcess[str]:
    code = EMITS.format(setup=setup)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_process_that_imports_gui_survives_many_emits() -> None:
    proc = _emit_a_lot("import gui")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "survived"


def test_the_fault_is_still_there_without_the_fix() -> None:
    # When this fails, PySide6 has fixed the fault: gui/pyside_fix.py can go.
    from gui.pyside_fix import binding_drops_references

    proc = _emit_a_lot("")
    if sys.version_info >= (3, 12) or not binding_drops_references():
        assert proc.returncode == 0
    else:
        assert proc.returncode != 0
        assert "Fatal Python error" in proc.stderr
        assert "_dealloc: deallocating" in proc.stderr
