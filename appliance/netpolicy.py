"""The workspace's network allow-list: the only addresses off this machine the appliance may reach.

Empty by default, and then the appliance reaches nothing beyond loopback (:mod:`appliance.offline`).
A run spread over several machines needs exactly one more address: the ``HOST:PORT`` where node 0
hosts torchrun's rendezvous. An administrator puts it on the list (``appliance network allow
10.0.0.5:29500``); every change is a row of the audit log, and every run that uses an entry
prints it and audits it. Entries are exact: one host, one port.

The list lives in ``HOME/network.json`` (owner-only, written atomically). It is not secret;
its changes are what the audit chain guards.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import offline
from appliance.errors import EgressBlockedError, UsageError
from appliance.fsutil import atomic_write_bytes

if TYPE_CHECKING:  # the training child reads the list without loading the registry
    from appliance.registry import Registry
    from appliance.workspace import Workspace

FILE = "network.json"
FORMAT = 1

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class NetworkPolicyError(EgressBlockedError):
    """An address off this machine that the allow-list does not admit."""


def parse_rendezvous(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); IPv6 literals in brackets (``[fd00::1]:29500``).

    Raises:
        UsageError: not HOST:PORT with a port from 1 to 65535.
    """
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid_host = _is_ip(host)
    else:
        valid_host = _is_ip(host) or bool(_HOST.match(host))
    if not sep or not valid_host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(
            f"--rendezvous {text!r}: give HOST:PORT of node 0, e.g. 10.0.0.5:29500 "
            "(a port from 1 to 65535)"
        )
    return host, int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def path(ws: Workspace) -> Path:
    return ws.home / FILE


def normalise_entry(entry: str) -> str:
    """``HOST:PORT`` with the host lower-cased (IPv6 in brackets).

    Raises:
        UsageError: not HOST:PORT.
    """
    host, port = parse_rendezvous(entry)
    host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load(ws: Workspace) -> list[str]:
    """The allow-list, sorted; empty when the file is absent.

    Raises:
        UsageError: the file is damaged (names it and the fix).
    """
    try:
        data = json.loads(path(ws).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{path(ws)}: cannot read the network allow-list ({exc}); fix or remove the file "
            "(removing it empties the list)"
        ) from None
    entries = data.get("allow") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise UsageError(f"{path(ws)}: 'allow' must be a list of HOST:PORT strings")
    return sorted({normalise_entry(e) for e in entries})


def _save(ws: Workspace, entries: list[str]) -> None:
    body = {"format": FORMAT, "allow": sorted(set(entries))}
    atomic_write_bytes(path(ws), (json.dumps(body, indent=2) + "\n").encode())


def add(ws: Workspace, reg: Registry, entry: str) -> str:
    """Put ``entry`` on the list (audited); returns it normalised."""
    value = normalise_entry(entry)
    with ws.writer("network allow"):
        entries = load(ws)
        if value not in entries:
            _save(ws, [*entries, value])
            reg.audit("network.allow", value, {"allow": sorted({*entries, value})})
    return value


def remove(ws: Workspace, reg: Registry, entry: str) -> str:
    """Take ``entry`` off the list (audited).

    Raises:
        UsageError: it is not on the list.
    """
    value = normalise_entry(entry)
    with ws.writer("network revoke"):
        entries = load(ws)
        if value not in entries:
            shown = ", ".join(entries) or "empty"
            raise UsageError(f"{value} is not on the network allow-list ({shown})")
        rest = [e for e in entries if e != value]
        _save(ws, rest)
        reg.audit("network.revoke", value, {"allow": rest})
    return value


def allow_list_line(entries: list[str]) -> str:
    """The line printed at the start of a run: what may be reached beyond loopback."""
    if not entries:
        return "Network allow-list: empty (nothing beyond this machine can be reached)"
    return "Network allow-list: " + ", ".join(entries)


def check_rendezvous(ws: Workspace, endpoint: str) -> str | None:
    """Refuse a rendezvous address off this machine that the allow-list does not hold.

    Returns:
        The normalised entry that admits it, or None for a loopback address (always allowed).

    Raises:
        NetworkPolicyError: the address is neither loopback nor on the list.
        UsageError: not HOST:PORT, or a damaged list.
    """
    host, _port = parse_rendezvous(endpoint)
    if offline.is_loopback_host(host):
        return None
    value = normalise_entry(endpoint)
    entries = load(ws)
    if value not in entries:
        shown = ", ".join(entries) if entries else "empty, so only this machine can be reached"
        raise NetworkPolicyError(
            f"the rendezvous {value} is off this machine and not on the workspace's network "
            f"allow-list ({shown}); nothing was started. An administrator admits exactly that "
            f"address with 'appliance network allow {value}' (see docs/cluster.md)"
        )
    return value


def admit(ws: Workspace, endpoint: str) -> str | None:
    """:func:`check_rendezvous`, then let this process reach that one address."""
    value = check_rendezvous(ws, endpoint)
    if value is not None:
        host, port = parse_rendezvous(value)
        offline.allow(host, port)
    return value
