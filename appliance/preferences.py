"""Workspace settings that are no secret: auto-lock, and which GPUs training may use.

They live in ``HOME/settings.json`` (plaintext on purpose: numbers only, nothing about
anybody's data), written atomically, so the desktop app and the CLI of every person who opens
the workspace see the same choices. The Settings page writes them; the window's auto-lock and
the Train page read them (:func:`load`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import UsageError, WorkspaceError
from appliance.fsutil import atomic_write_bytes
from appliance.workspace import Workspace

SETTINGS_FILE = "settings.json"
MAX_AUTO_LOCK_MINUTES = 24 * 60
MAX_SETTINGS_BYTES = 64 * 1024


@dataclass(frozen=True)
class Preferences:
    """The workspace's settings, with their defaults."""

    auto_lock_minutes: int = 15
    """Lock the desktop app after this many minutes without keyboard or mouse input; 0 never."""
    training_gpus: tuple[int, ...] | None = None
    """NVML indices of the GPUs training may use; None: every GPU found; empty: none (CPU)."""

    def __post_init__(self) -> None:
        minutes = self.auto_lock_minutes
        if isinstance(minutes, bool) or not isinstance(minutes, int):
            raise UsageError("auto-lock minutes must be a whole number")
        if not 0 <= minutes <= MAX_AUTO_LOCK_MINUTES:
            raise UsageError(
                f"auto-lock after {minutes} minutes is out of range; choose 0 (never) to "
                f"{MAX_AUTO_LOCK_MINUTES}"
            )
        if self.training_gpus is not None:
            gpus = self.training_gpus
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in gpus):
                raise UsageError("training GPUs must be GPU indices (0, 1, ...)")
            if len(set(gpus)) != len(gpus):
                raise UsageError("a training GPU is listed twice")

    def allows_gpu(self, index: int) -> bool:
        """Whether training may use the GPU of NVML index ``index``."""
        return self.training_gpus is None or index in self.training_gpus

    def to_json(self) -> dict[str, Any]:
        return {
            "auto_lock_minutes": self.auto_lock_minutes,
            "training_gpus": None if self.training_gpus is None else list(self.training_gpus),
        }


def settings_path(ws: Workspace) -> Path:
    return ws.home / SETTINGS_FILE


def load(ws: Workspace) -> Preferences:
    """The workspace's settings; the defaults when it has none yet.

    Raises:
        WorkspaceError: the settings file is unreadable or damaged (the message says how to
            get the defaults back).
    """
    path = settings_path(ws)
    fix = f"delete {path} to go back to the default settings"
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SETTINGS_BYTES + 1)
    except FileNotFoundError:
        return Preferences()
    except OSError as exc:
        raise WorkspaceError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None
    try:
        if len(raw) > MAX_SETTINGS_BYTES:
            raise ValueError("file too large")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in dataclasses.fields(Preferences)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("training_gpus"), list):
            values["training_gpus"] = tuple(values["training_gpus"])
        return Preferences(**values)
    except (ValueError, UnicodeDecodeError, TypeError, UsageError) as exc:
        raise WorkspaceError(f"{path} is damaged ({exc}); {fix}") from None


def save(ws: Workspace, prefs: Preferences) -> None:
    """Write the settings atomically (mode 0600)."""
    body = json.dumps(prefs.to_json(), indent=2) + "\n"
    atomic_write_bytes(settings_path(ws), body.encode())


def update(ws: Workspace, **changes: Any) -> Preferences:
    """Change some settings and save them; returns the new settings.

    Raises:
        UsageError: a value out of range (nothing is written).
        WorkspaceError: the current file is damaged.
    """
    prefs = dataclasses.replace(load(ws), **changes)
    save(ws, prefs)
    return prefs
