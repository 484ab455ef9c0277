"""What a new passphrase must be: the one rule the CLI and the desktop app both apply.

Kept apart from the key-slot code so the GUI's dialog can check a passphrase as it is typed
without touching the disk, and so the two front ends can never drift apart. Only *new*
passphrases are checked: unlocking never refuses a passphrase for its shape, so tightening the
rule can never lock anybody out of an existing workspace.
"""

from __future__ import annotations

from appliance.errors import UsageError

MIN_PASSPHRASE_CHARS = 8
"""Characters a new passphrase needs, not counting spaces (a space-only passphrase is none)."""


def passphrase_problem(passphrase: str) -> str | None:
    """Why ``passphrase`` cannot be a new passphrase, as a sentence; None when it can.

    Whitespace does not count: ten spaces, or "a b c d", would be guessed at once.
    """
    visible = sum(1 for char in passphrase if not char.isspace())
    if visible < MIN_PASSPHRASE_CHARS:
        return (
            f"the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters besides "
            "spaces; a few unrelated words make a good one"
        )
    return None


def check_new_passphrase(passphrase: str) -> str:
    """Return ``passphrase`` when it may become a new passphrase.

    Raises:
        UsageError: the sentence of :func:`passphrase_problem`.
    """
    problem = passphrase_problem(passphrase)
    if problem is not None:
        raise UsageError(problem)
    return passphrase
