"""Cancelling long work in a child process: SIGTERM stops it at the next Python instruction.

A job's child process (:mod:`appliance.jobs.child`) calls :func:`raise_on_sigterm`; from then
on SIGTERM raises :class:`Cancelled` in the main thread, so ``finally`` blocks and context
managers remove temporary files, release the writer lock and roll back open transactions.

Two rules keep a cancel from leaving anything half-done:

- **One cancel only.** Later SIGTERMs are ignored, so a second click on Cancel cannot interrupt
  the cleanup that the first one started.
- **A point of no return.** Work that publishes its result in more than one step (rename a
  folder into place, then write its registry row) calls :func:`point_of_no_return` just before
  the first step: a cancel that arrives after it is ignored and the work finishes, so it is never
  left with a folder and no row, or a row and no folder. Outside a job's child (the CLI, tests)
  the call only records the fact.
"""

from __future__ import annotations

import signal
from types import FrameType


class Cancelled(BaseException):
    """Raised in the main thread when the parent asks the process to stop (SIGTERM).

    A BaseException, like KeyboardInterrupt, so ``except Exception`` in library code does not
    swallow it.
    """


_cancelling = False
_committed = False


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Cancelled` (once, and not past the point of no return)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    global _cancelling
    if _cancelling or _committed:
        return
    _cancelling = True
    raise Cancelled()


def point_of_no_return() -> None:
    """The work is about to publish its result: from here on a cancel is ignored."""
    global _committed
    _committed = True
