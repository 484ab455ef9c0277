"""Names of registry objects and ``NAME@VERSION`` / ``NAME@TAG`` references."""

from __future__ import annotations

import getpass
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance.errors import UsageError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TAG_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
VERSION_RE = re.compile(r"[0-9]+")
"""ASCII digits only: ``str.isdigit`` also accepts "²" and other scripts' digits."""
MAX_VERSION = 2**63 - 1
"""SQLite's largest integer; a version number beyond it cannot exist (or be looked up)."""


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid object name, else raise :class:`UsageError`."""
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid {what} {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (no '@', '/' or spaces)"
        )
    return name


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag (it must start with a letter, unlike a version)."""
    if not TAG_RE.fullmatch(tag):
        raise UsageError(
            f"invalid tag {tag!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter (e.g. production)"
        )
    return tag


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``name``, ``name@3`` or ``name@production``."""

    name: str
    version: int | None = None
    tag: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.tag is not None:
            return f"{self.name}@{self.tag}"
        return self.name


def parse_ref(text: str, what: str = "adapter") -> Ref:
    """Parse ``NAME``, ``NAME@N`` or ``NAME@TAG``.

    Raises:
        UsageError: the text is not such a reference.
    """
    name, sep, rest = text.partition("@")
    check_name(name, f"{what} name")
    if not sep:
        return Ref(name)
    if VERSION_RE.fullmatch(rest):
        version = int(rest)
        if 1 <= version <= MAX_VERSION:
            return Ref(name, version=version)
        raise UsageError(
            f"invalid {what} reference {text!r}: versions are numbers from 1 to {MAX_VERSION}"
        )
    if TAG_RE.fullmatch(rest):
        return Ref(name, tag=rest)
    raise UsageError(
        f"invalid {what} reference {text!r}: write NAME, NAME@VERSION (a number from 1) or NAME@TAG"
    )


def now() -> str:
    """The current time as ISO-8601 UTC with microseconds (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def os_user() -> str:
    """Who is running this process, for ``created_by`` and audit rows."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def dumps(value: Any) -> str:
    """Canonical JSON for stored columns and hashes: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads(value: str | None, default: Any = None) -> Any:
    """Parse a JSON column; ``default`` for NULL."""
    if value is None:
        return default
    return json.loads(value)
