"""The CLI's progress bar: drawn on a terminal, absent otherwise."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from appliance.cli import progress


def test_bar_names_each_stage_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(progress, "err", Console(file=screen, force_terminal=True, width=100))
    with progress.stage_progress({"copying": "Copying", "verifying": "Verifying"}) as update:
        assert update is not None
        update(512, 1024, "copying")
        update(0, 0, "custom stage")  # an unknown total is allowed
        update(1, 2, "verifying")
    text = screen.getvalue()  # the bar redraws on a timer: the final frame is always there
    assert "Verifying" in text
    assert "1/2 bytes" in text


def test_no_bar_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "err", Console(file=io.StringIO(), force_terminal=False))
    with progress.stage_progress({"copying": "Copying"}) as update:
        assert update is None
