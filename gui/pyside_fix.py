"""A workaround for PySide6 6.12.0 on CPython 3.11: ``Signal.emit()`` drops a reference to True.

``SignalInstance.emit`` returns ``True`` without taking a new reference. On CPython 3.12 and
later True is immortal and nothing happens; on 3.11 every emit lowers True's count by one, and
after a few hundred to a few thousand emits (a bare PySide process starts near 600) the
interpreter aborts with "Fatal Python error: bool_dealloc: deallocating True or False". A
progress bar, a log console or the GPU monitor of the status bar gets there in minutes.

:func:`apply` checks for the fault with one emit and, where it is present, makes True immortal
as CPython 3.12 does: its count is raised out of reach of any number of emits. Nothing else
changes, and a PySide6 that has the fault fixed is left alone.
"""

from __future__ import annotations

import ctypes
import sys

IMMORTAL = 1 << 60
"""The count True is raised to: no process lives long enough to emit this many signals."""


def emit_drops_true() -> bool:
    """Whether an emit of this PySide6 lowers True's reference count."""
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    signal = probe.ping
    before = sys.getrefcount(True)
    signal.emit()
    return sys.getrefcount(True) < before


def apply() -> bool:
    """Protect this process from the fault if it has it; whether a change was made."""
    if sys.version_info >= (3, 12) or not emit_drops_true():
        return False
    count = ctypes.c_ssize_t.from_address(id(True))
    count.value = max(count.value, IMMORTAL)
    return True
