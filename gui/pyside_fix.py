"""A workaround for PySide6 6.12.0 on CPython 3.11: its bindings drop references to None and True.

Methods that return nothing (``setText``, ``setValue``, ``QTimer.start``, ``processEvents``...)
return ``None`` without taking a new reference, and ``Signal.emit()`` does the same with
``True``. On CPython 3.12 and later these objects are immortal and nothing happens; on 3.11
every such call lowers their count by one, until the interpreter aborts with "Fatal Python error:
none_dealloc: deallocating None" (or ``bool_dealloc`` for True). A bare PySide process starts
with True near 600 references, so a progress bar, a log console or the status bar's GPU monitor
(a timer, an emit and a label update every second) brings the window down within minutes.

:func:`apply` checks for the fault and, where it is present, makes None, True and False immortal
as CPython 3.12 does: their counts are raised out of reach of any number of calls. Nothing else
changes, and a PySide6 without the fault (or a newer CPython) is left alone.
"""

from __future__ import annotations

import ctypes
import sys

IMMORTAL = 1 << 60
"""The count the singletons are raised to: no process lives long enough to make this many calls."""


def binding_drops_references() -> bool:
    """Whether this PySide6 lowers the count of None (void methods) or True (``emit``)."""
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    signal = probe.ping
    none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(10):
        probe.setObjectName("probe")
        signal.emit()
    return sys.getrefcount(None) < none_before or sys.getrefcount(True) < true_before


def apply() -> bool:
    """Protect this process from the fault if it has it; whether a change was made."""
    if sys.version_info >= (3, 12) or not binding_drops_references():
        return False
    for singleton in (None, True, False):
        count = ctypes.c_ssize_t.from_address(id(singleton))
        count.value = max(count.value, IMMORTAL)
    return True
