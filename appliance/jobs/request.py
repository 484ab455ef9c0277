"""What a parent hands a job: its kind, workspace, parameters and exactly the secrets it needs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import IntegrityError, UsageError
from appliance.vault.objects import KEY_BYTES, decrypt_with_data_key

if TYPE_CHECKING:
    from appliance.vault import Vault


@dataclass(frozen=True)
class JobRequest:
    """One job to start: ``command()`` is its command line, ``request_line()`` goes on its stdin."""

    kind: str
    """A key of :data:`appliance.jobs.kinds.KINDS`."""
    home: Path
    """The workspace folder."""
    params: dict[str, Any] = field(default_factory=dict)
    """JSON-ready parameters of the kind (paths, names, options); no secrets."""
    keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Data keys of the vault objects the job reads, by object id (see :class:`KeyRing`)."""
    audit_key: bytes | None = field(default=None, repr=False)
    """For a job that writes registry rows: the key of the audit chain."""
    interactive: bool = False
    """The job reads further command lines from stdin after the request (stdin stays open)."""

    @classmethod
    def for_vault(
        cls,
        vault: Vault,
        kind: str,
        params: dict[str, Any] | None = None,
        *,
        objects: Iterable[tuple[Path, str, str]] = (),
        writes_registry: bool = False,
        interactive: bool = False,
    ) -> JobRequest:
        """A request whose secrets come from an unlocked vault.

        Args:
            objects: ``(path, object_id, what)`` of each vault object the job will read; only
                their data keys are handed over.
            writes_registry: hand over the audit key, so the job can add registry rows.
        """
        keys = {oid: vault.data_key(path, oid, what) for path, oid, what in objects}
        return cls(
            kind=kind,
            home=vault.ws.home,
            params=dict(params or {}),
            keys=keys,
            audit_key=vault.audit_key if writes_registry else None,
            interactive=interactive,
        )

    def command(self) -> list[str]:
        """The child's command line: the same one an administrator could type."""
        return [sys.executable, "-m", "appliance.jobs", self.kind, "--home", str(self.home)]

    def request_line(self) -> bytes:
        """The one JSON line written to the child's stdin."""
        body = {
            "params": self.params,
            "keys": {oid: key.hex() for oid, key in self.keys.items()},
            "audit_key": self.audit_key.hex() if self.audit_key is not None else None,
        }
        return (json.dumps(body) + "\n").encode()


@dataclass(frozen=True)
class KeyRing:
    """The data keys a job was given: it can read those vault objects and no other."""

    keys: dict[str, bytes] = field(default_factory=dict, repr=False)

    def key(self, object_id: str, what: str) -> bytes:
        """The data key of ``object_id``.

        Raises:
            UsageError: the parent did not hand over that object's key.
        """
        try:
            return self.keys[object_id]
        except KeyError:
            raise UsageError(
                f"this job was not given the key of {what}; start it from the appliance, which "
                "hands over exactly the keys a job needs"
            ) from None

    def read(self, path: Path, object_id: str, what: str) -> bytearray:
        """The whole plaintext of one object, authenticated (see :func:`read_object`)."""
        return decrypt_with_data_key(Path(path), self.key(object_id, what), object_id, what)

    def stream(self, path: Path, object_id: str, what: str) -> Iterator[bytes]:
        """The plaintext of one object as one piece (objects a job reads fit in memory)."""
        yield bytes(self.read(path, object_id, what))


def parse_request(line: str) -> tuple[dict[str, Any], KeyRing, bytes | None]:
    """The parameters, key ring and audit key of a request line.

    Raises:
        UsageError: no line, not JSON, or keys that are not 32 bytes of hex.
    """
    if not line.strip():
        raise UsageError(
            "no request arrived on stdin: a job expects one JSON line with its parameters and "
            "keys; start jobs from the appliance (desktop app or CLI)"
        )
    try:
        body = json.loads(line)
        params = body.get("params") or {}
        ring = key_ring(body.get("keys") or {})
        audit_hex = body.get("audit_key")
        audit_key = bytes.fromhex(audit_hex) if audit_hex else None
    except (ValueError, TypeError, AttributeError, RecursionError):
        raise UsageError(
            "the request on stdin is not a JSON object of params and hex keys"
        ) from None
    if not isinstance(params, dict):
        raise UsageError("the request's params are not a JSON object")
    if audit_key is not None and len(audit_key) != 32:
        raise IntegrityError("the audit key given on stdin is not a 32-byte key")
    return params, ring, audit_key


def key_ring(hex_keys: dict[str, str]) -> KeyRing:
    """The key ring of ``{object_id: hex key}`` as a request (or a later command) carries it.

    Raises:
        ValueError, TypeError, AttributeError: not a mapping of hex strings.
        IntegrityError: a key that is not :data:`KEY_BYTES` long.
    """
    keys = {str(k): bytes.fromhex(v) for k, v in hex_keys.items()}
    for oid, key in keys.items():
        if len(key) != KEY_BYTES:
            raise IntegrityError(f"the key given for object {oid} is not a {KEY_BYTES}-byte key")
    return KeyRing(keys)
