"""Suite-wide settings: offscreen Qt, no egress, one torch thread, shared fixtures."""

from __future__ import annotations

import os

# Before anything imports Qt or Hugging Face libraries.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.pop("APPLIANCE_PASSPHRASE", None)

from appliance import offline

offline.enforce()

pytest_plugins = ["tests.helpers.fixtures"]

import pytest  # noqa: E402

# ``make test`` runs one worker per core with ``--dist loadfile``: a file's tests stay on one
# worker, so module fixtures, and the session's SmolLM2 run (its tests share one file), are built
# once. The longest files go first, so that no worker is left alone with one at the end.
_LONGEST_FIRST = ("e2e", "packaging")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the folders of the longest files first (pytest-xdist hands out files in this order)."""
    root = config.rootpath / "tests"
    items.sort(key=lambda item: _rank(item.path.relative_to(root).parts[0]))


def _rank(folder: str) -> int:
    return _LONGEST_FIRST.index(folder) if folder in _LONGEST_FIRST else len(_LONGEST_FIRST)
