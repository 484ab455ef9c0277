"""Workspace settings: defaults, a round trip through settings.json, refusals, a damaged file."""

from __future__ import annotations

import json

import pytest

from appliance import preferences
from appliance.errors import UsageError, WorkspaceError
from appliance.preferences import Preferences
from appliance.workspace import Workspace


def test_defaults_without_a_file(ws: Workspace) -> None:
    prefs = preferences.load(ws)
    assert prefs == Preferences(auto_lock_minutes=15, training_gpus=None)
    assert prefs.allows_gpu(0)
    assert prefs.allows_gpu(7)
    assert not preferences.settings_path(ws).exists()


def test_update_round_trips_and_keeps_other_fields(ws: Workspace) -> None:
    preferences.update(ws, auto_lock_minutes=0)
    prefs = preferences.update(ws, training_gpus=(1,))
    assert prefs == Preferences(auto_lock_minutes=0, training_gpus=(1,))
    assert preferences.load(ws) == prefs
    path = preferences.settings_path(ws)
    assert json.loads(path.read_text()) == {"auto_lock_minutes": 0, "training_gpus": [1]}
    assert path.stat().st_mode & 0o777 == 0o600
    assert not prefs.allows_gpu(0)
    assert prefs.allows_gpu(1)
    assert not Preferences(training_gpus=()).allows_gpu(0)  # none: train on the CPU


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"auto_lock_minutes": -1}, "auto-lock after -1 minutes is out of range"),
        ({"auto_lock_minutes": 100_000}, "choose 0 (never) to 1440"),
        ({"auto_lock_minutes": True}, "whole number"),
        ({"training_gpus": (0, 0)}, "listed twice"),
        ({"training_gpus": (-1,)}, "GPU indices"),
    ],
)
def test_bad_values_are_refused_and_nothing_is_written(
    ws: Workspace, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        preferences.update(ws, **changes)
    assert not preferences.settings_path(ws).exists()


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b'{"auto_lock_minutes": "soon"}', b"\xff\xfe"]
)
def test_a_damaged_file_says_how_to_get_the_defaults(ws: Workspace, content: bytes) -> None:
    path = preferences.settings_path(ws)
    path.write_bytes(content)
    with pytest.raises(WorkspaceError) as caught:
        preferences.load(ws)
    assert str(caught.value).startswith(f"{path} is damaged (")
    assert str(caught.value).endswith(f"delete {path} to go back to the default settings")


def test_unknown_keys_are_ignored(ws: Workspace) -> None:
    preferences.settings_path(ws).write_text('{"auto_lock_minutes": 5, "theme": "dark"}')
    assert preferences.load(ws) == Preferences(auto_lock_minutes=5)
