"""What happened in the registry: tag moves (planned and past) and the audit log, filtered.

The tag history is read from the audit log (``adapter.tag`` / ``adapter.untag`` rows), which
is where every move is recorded with who made it and when; the tags table only knows where each
tag points now. :func:`plan_tag` says what a tag command is about to do, so a view can show the
move before it happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from appliance.errors import UsageError
from appliance.registry import Registry
from appliance.registry.refs import Ref, check_tag, loads, parse_ref
from appliance.registry.rows import AuditRow

STANDARD_TAGS = ("production", "staging")
"""Tags every team uses; any other name that :func:`check_tag` accepts works too."""


@dataclass(frozen=True)
class TagMove:
    """What pointing ``tag`` at ``target`` will do."""

    name: str
    tag: str
    target: str
    """``NAME@N`` that will carry the tag."""
    previous: str | None
    """``NAME@N`` that carries it now and will lose it (None: nobody has it)."""

    @property
    def changes_anything(self) -> bool:
        return self.previous != self.target

    def describe(self) -> str:
        """One sentence for a confirmation, naming the version that loses the tag."""
        if self.previous is None:
            return f"{self.target} will be tagged {self.tag}; no version of {self.name} has it now."
        if not self.changes_anything:
            return f"{self.target} is already tagged {self.tag}; nothing changes."
        return (
            f"The tag {self.tag} will move from {self.previous} to {self.target}: "
            f"{self.previous} loses it."
        )


def plan_tag(reg: Registry, ref: str, tag: str) -> TagMove:
    """What ``reg.tags.set(ref, tag)`` would do, without doing it.

    Raises:
        UsageError: an invalid tag or reference.
        NotFoundError: no such (live) adapter version.
    """
    check_tag(tag)
    target = reg.adapters.version(ref)
    current = [t for t in reg.tags.all(target["name"]) if t["tag"] == tag]
    previous = f"{target['name']}@{current[0]['version']}" if current else None
    return TagMove(target["name"], tag, target["ref"], previous)


@dataclass(frozen=True)
class TagChange:
    """One past tag move or removal, from the audit log."""

    seq: int
    time: str
    user: str
    name: str
    tag: str
    action: str
    """``set`` or ``removed``."""
    version: int | None
    """The version that got the tag (None for a removal)."""
    previous: int | None
    """The version that had it before a ``set`` (None: nobody)."""


def tag_history(reg: Registry, name: str) -> list[TagChange]:
    """Every tag move and removal of adapter ``name``, oldest first."""
    changes = []
    for row in reg.audit_rows(action="adapter"):
        if row["action"] not in ("adapter.tag", "adapter.untag"):
            continue
        obj = str(row["object"])
        if obj.partition("@")[0] != name:
            continue
        details = row["details"] if isinstance(row["details"], dict) else loads(row["details"])
        if row["action"] == "adapter.tag":
            version = details.get("version")
            if version is None:
                version = parse_ref(obj).version
            changes.append(
                TagChange(
                    seq=row["seq"],
                    time=row["time"],
                    user=row["user"],
                    name=name,
                    tag=str(details.get("tag")),
                    action="set",
                    version=version,
                    previous=details.get("previous"),
                )
            )
        else:
            changes.append(
                TagChange(
                    seq=row["seq"],
                    time=row["time"],
                    user=row["user"],
                    name=name,
                    tag=str(details.get("tag")),
                    action="removed",
                    version=None,
                    previous=None,
                )
            )
    return changes


# -- the audit log -------------------------------------------------------------------------------


def _day_or_time(value: str | None, what: str) -> str | None:
    """A date (``2026-01-31``) or an ISO time, as given, after checking it parses."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            date.fromisoformat(text)
        else:
            datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{what} {value!r} is not a date; write it as YYYY-MM-DD (or YYYY-MM-DDTHH:MM)"
        ) from None
    return text


@dataclass(frozen=True)
class AuditFilter:
    """Which audit rows to show. ``None`` (or empty) means any."""

    action: str | None = None
    """An action (``adapter.tag``) or its family (``adapter`` matches ``adapter.*``)."""
    user: str | None = None
    object: str | None = None
    """Part of the object's name, e.g. ``legal`` or ``legal@2``."""
    since: str | None = None
    """From this date or time on (``YYYY-MM-DD`` or ISO time, UTC, inclusive)."""
    until: str | None = None
    """Up to this date or time (inclusive: a date means the whole day)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "since", _day_or_time(self.since, "from"))
        object.__setattr__(self, "until", _day_or_time(self.until, "to"))

    def admits(self, row: AuditRow) -> bool:
        action = str(row["action"])
        if self.action and not (action == self.action or action.startswith(f"{self.action}.")):
            return False
        if self.user and row["user"] != self.user:
            return False
        if self.object and self.object not in str(row["object"]):
            return False
        time = str(row["time"])
        if self.since and time < self.since:
            return False
        return not (self.until and time[: len(self.until)] > self.until)


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    seq: int
    time: str
    user: str
    action: str
    object: str
    details: dict[str, Any]
    keyed: bool
    """Chained with the vault's key (HMAC) rather than a bare hash."""


@dataclass(frozen=True)
class AuditLog:
    """The rows a filter admits, and what the filters can choose from."""

    entries: tuple[AuditEntry, ...]
    total: int
    """Rows in the whole log."""
    actions: tuple[str, ...]
    """Every action present (for a drop-down), with their families (``adapter``...)."""
    users: tuple[str, ...]


def audit_log(reg: Registry, flt: AuditFilter | None = None) -> AuditLog:
    """The audit rows ``flt`` admits, oldest first (the chain is checked by ``verify``)."""
    flt = flt or AuditFilter()
    rows = reg.audit_rows()
    entries = tuple(
        AuditEntry(
            seq=int(r["seq"]),
            time=str(r["time"]),
            user=str(r["user"]),
            action=str(r["action"]),
            object=str(r["object"]),
            details=r["details"] if isinstance(r["details"], dict) else {"value": r["details"]},
            keyed=bool(r["keyed"]),
        )
        for r in rows
        if flt.admits(r)
    )
    actions = {str(r["action"]) for r in rows}
    families = {a.split(".")[0] for a in actions if "." in a}
    return AuditLog(
        entries=entries,
        total=len(rows),
        actions=tuple(sorted(actions | families)),
        users=tuple(sorted({str(r["user"]) for r in rows})),
    )


def ref_name(ref: str | Ref) -> str:
    """The adapter name of ``NAME``, ``NAME@N`` or ``NAME@TAG``."""
    return (parse_ref(ref) if isinstance(ref, str) else ref).name
