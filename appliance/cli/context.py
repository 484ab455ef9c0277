"""State shared by every CLI command: the workspace, the passphrase, output helpers."""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from appliance.errors import PassphraseError
from appliance.fsutil import FileTooLargeError, SpecialFileError, read_regular_file
from appliance.workspace import Workspace, open_workspace

if TYPE_CHECKING:
    from appliance.registry import Registry
    from appliance.vault import Vault

PASSPHRASE_ENV = "APPLIANCE_PASSPHRASE"
MAX_PASSPHRASE_FILE_BYTES = 64 * 1024
"""A passphrase file holds one line; anything larger is the wrong file."""

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class CliState:
    """What the global options said; stored in ``ctx.obj``."""

    home: Path | None = None
    passphrase_file: Path | None = None
    debug: bool = False
    _vault: Vault | None = field(default=None, repr=False)
    """The vault once unlocked, so one command asks for the passphrase once."""

    def workspace(self) -> Workspace:
        """The workspace of ``--home`` / ``APPLIANCE_HOME`` / the default; it must exist."""
        return open_workspace(self.home)

    def passphrase(self, *, prompt: str = "Passphrase", confirm: bool = False) -> str:
        """The passphrase from ``--passphrase-file``, ``APPLIANCE_PASSPHRASE`` or a prompt."""
        return resolve_passphrase(self.passphrase_file, prompt=prompt, confirm=confirm)

    def vault(self, ws: Workspace) -> Vault:
        """The unlocked vault of ``ws``; the passphrase is asked (and Argon2id run) once.

        Raises:
            PassphraseError: no passphrase could be read, it is wrong, or ``ws`` has no vault.
        """
        from appliance.vault import Vault, keyslots

        if self._vault is None or self._vault.ws.home != ws.home:
            # Slots are read (and their KDF settings bounded) before anybody is asked to type.
            keyslots.read_slots(ws)
            self._vault = Vault.unlock(ws, self.passphrase())
            for warning in self._vault.warnings:
                err.print(f"warning: {warning}", markup=False)
        return self._vault

    def registry(self, ws: Workspace, *, unlock: bool = True, readonly: bool = False) -> Registry:
        """Open the registry of ``ws`` (the caller closes it, e.g. ``with st.registry(ws) as reg``).

        Without a vault there is no audit key; once the workspace has key slots this unlocks the
        vault first (asking for the passphrase) and passes the audit key derived from its
        master key. Read-only commands pass ``unlock=False`` to skip the passphrase: they can
        read everything in the registry, and a write to the keyed audit log fails clearly.
        Commands that never write pass ``readonly=True``: the file is opened ``mode=ro``, so
        they work on a read-only workspace and cannot change anything by mistake.
        """
        from appliance.registry import Registry
        from appliance.vault import has_vault

        if unlock and has_vault(ws):
            return Registry.open(ws, audit_key=self.vault(ws).audit_key, readonly=readonly)
        return Registry.open(ws, audit_key=None, readonly=readonly)


def resolve_passphrase(
    passphrase_file: Path | None, *, prompt: str = "Passphrase", confirm: bool = False
) -> str:
    """Read the passphrase; the file wins over the environment, the environment over a prompt.

    Raises:
        PassphraseError: the source is empty or unreadable, or there is no terminal to ask on.
    """
    if passphrase_file is not None:
        raw = read_passphrase_file(Path(passphrase_file))
        value = raw.rstrip("\r\n")
        if not value:
            raise PassphraseError(f"the passphrase file {passphrase_file} is empty")
        return value
    if PASSPHRASE_ENV in os.environ:
        value = os.environ[PASSPHRASE_ENV]
        if not value:
            raise PassphraseError(
                f"{PASSPHRASE_ENV} is set but empty; set it to the passphrase, or unset it "
                "to be asked"
            )
        return value
    if not sys.stdin.isatty():
        raise PassphraseError(
            "a passphrase is needed and there is no terminal to ask on; use --passphrase-file "
            f"FILE or set {PASSPHRASE_ENV}"
        )
    value = getpass.getpass(f"{prompt}: ")
    if not value:
        raise PassphraseError("the passphrase must not be empty")
    if confirm and getpass.getpass(f"{prompt} (again): ") != value:
        raise PassphraseError("the two passphrases differ; nothing was changed")
    return value


def read_passphrase_file(path: Path) -> str:
    """The text of a passphrase file: a regular file of at most :data:`MAX_PASSPHRASE_FILE_BYTES`.

    A FIFO, a device (``/dev/zero``, ``/dev/urandom``) or a huge file is refused before reading,
    so a wrong path can neither hang the command nor exhaust memory.

    Raises:
        PassphraseError: the file is missing, unreadable, not a regular file, too large, or
            not UTF-8.
    """
    try:
        return read_regular_file(path, MAX_PASSPHRASE_FILE_BYTES).decode("utf-8")
    except SpecialFileError as exc:
        raise PassphraseError(
            f"the passphrase file {path} is {exc.strerror}; write the passphrase to a file only "
            f"you can read (mode 600), or set {PASSPHRASE_ENV}"
        ) from None
    except FileTooLargeError as exc:
        raise PassphraseError(
            f"the passphrase file {path} has {exc.size:,} bytes, more than a passphrase file "
            f"may ({MAX_PASSPHRASE_FILE_BYTES:,}); check the path"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise PassphraseError(
            f"cannot read the passphrase file {path}: {reason}; check the path and its permissions"
        ) from None


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        ctx.find_root().obj = obj
    return obj


def print_json(value: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n")
