"""No-egress mode. Every entry point (CLI, GUI, training child) calls :func:`enforce` first.

Two layers:

1. Environment variables that put Hugging Face libraries and common trackers into offline,
   no-telemetry mode. They must be set before those libraries are imported, because they read
   them at import time; :func:`enforce` also patches ``huggingface_hub`` if it was imported early.
2. A ``sys.addaudithook`` hook that refuses, inside this Python process, every socket connect,
   send and name lookup whose target is not loopback or a local (Unix, netlink) socket. It raises
   :class:`~appliance.errors.EgressBlockedError` naming the address, before any packet leaves.

An audit hook cannot be removed, so once enforced the process stays offline.

The one exception is explicit: :func:`allow` admits exactly one ``HOST:PORT`` (connections to that
port of that host, and name lookups of that host), for the rendezvous of a training run spread
over several machines. The address must be on the workspace's network allow-list
(:mod:`appliance.netpolicy`: empty by default, printed when a run uses it, every change audited).
Nothing else is admitted, not even another port of the same host. The hook sees only Python's
socket calls: the C++ transports of torch.distributed (the TCP store, gloo, NCCL) open their
own sockets, which the site's firewall must confine (docs/cluster.md).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from typing import Any

from appliance.errors import EgressBlockedError

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "WANDB_DISABLED": "true",
    "MLFLOW_TRACKING_URI": "file:///dev/null",
    "COMET_MODE": "disabled",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "BITSANDBYTES_NOWELCOME": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_INET_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})
_NAME_LOOKUPS = frozenset(
    {
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyname_ex",
        "socket.gethostbyaddr",
    }
)
_installed = False
_allowed: set[tuple[str, int]] = set()
"""(host, port) pairs admitted by :func:`allow`, hosts lower-cased."""


def is_loopback_host(host: object) -> bool:
    """Whether ``host`` (a name, an IP literal, bytes or None) stays on this machine."""
    if host is None:
        return True  # getaddrinfo(None, port) resolves to the local wildcard/loopback
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip().rstrip(".").lower()
    if name in _LOCAL_NAMES:
        return True
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _refuse(what: str, target: object) -> None:
    raise EgressBlockedError(
        f"network access blocked: this appliance runs offline and refused a {what} to {target!r}; "
        "nothing may leave this machine (if a library tried this, report it)"
    )


def _host_key(host: object) -> str:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return str(host).strip().rstrip(".").lower().removeprefix("[").removesuffix("]")


def _is_allowed(host: object, port: object) -> bool:
    if not _allowed:
        return False
    key = _host_key(host)
    if port is None:
        return any(key == allowed_host for allowed_host, _ in _allowed)
    try:
        number = int(port)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False
    return (key, number) in _allowed


def _check_socket_address(sock: Any, address: Any, what: str) -> None:
    family = getattr(sock, "family", None)
    if family not in _INET_FAMILIES:
        return  # Unix, netlink and other machine-local sockets
    host = address[0] if isinstance(address, tuple) and address else address
    port = address[1] if isinstance(address, tuple) and len(address) > 1 else -1
    if not is_loopback_host(host) and not _is_allowed(host, port):
        _refuse(what, address)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not event.startswith("socket."):
        return
    if event == "socket.connect":
        _check_socket_address(args[0], args[1], "connection")
    elif event == "socket.sendto":
        _check_socket_address(args[0], args[1], "datagram")
    elif event == "socket.sendmsg":
        if len(args) > 1 and args[1] is not None:
            _check_socket_address(args[0], args[1], "datagram")
    elif event == "socket.getaddrinfo" or event in (
        "socket.gethostbyname",
        "socket.gethostbyname_ex",
        "socket.gethostbyaddr",
    ):
        if not is_loopback_host(args[0]) and not _is_allowed(args[0], None):
            _refuse("name lookup", args[0])
    elif event == "socket.getnameinfo":
        sockaddr = args[0]
        host = sockaddr[0] if isinstance(sockaddr, tuple) and sockaddr else sockaddr
        if not is_loopback_host(host):
            _refuse("name lookup", sockaddr)


HUB_KERNEL_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")
"""Where libraries log their refused attempt to fetch a kernel from the Hub: bitsandbytes, on
CPUs with AVX-512 bf16, asks the ``kernels`` package for ``kernels-community``'s CPU kernel at
import, which offline mode refuses (the audit hook would too), and then uses its own kernel.
Two warning lines on every import that names a network source the appliance never uses."""


class _HubKernelNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "kernels-community" not in message and "publisher trust check" not in message


def enforce() -> None:
    """Put this process into no-egress mode. Idempotent; call it before any other import."""
    global _installed
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    for name in HUB_KERNEL_LOGGERS:
        hub_logger = logging.getLogger(name)
        if not any(isinstance(f, _HubKernelNoise) for f in hub_logger.filters):
            hub_logger.addFilter(_HubKernelNoise())
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        # huggingface_hub read the environment when it was imported: correct its copy too.
        hub_constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        hub_constants.HF_HUB_DISABLE_TELEMETRY = True  # type: ignore[attr-defined]
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


def allow(host: str, port: int) -> None:
    """Admit connections to exactly ``host:port`` (and name lookups of ``host``) in this process.

    For the rendezvous address of a run on several machines, after the caller has checked it
    against the workspace's allow-list (:func:`appliance.netpolicy.check_rendezvous`).
    """
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is not a TCP port")
    key = _host_key(host)
    _allowed.add((key, int(port)))
    try:
        ipaddress.ip_address(key.split("%", 1)[0])
    except ValueError:
        # A name: admit the addresses it stands for now, on that port only (the lookup itself
        # is admitted by the entry just added).
        for info in socket.getaddrinfo(key, int(port), proto=socket.IPPROTO_TCP):
            _allowed.add((_host_key(info[4][0]), int(port)))


def allowed() -> list[str]:
    """The addresses :func:`allow` admitted in this process, as ``HOST:PORT``."""
    return sorted(f"{host}:{port}" for host, port in _allowed)


def is_enforced() -> bool:
    """Whether :func:`enforce` has run in this process."""
    return _installed
