"""Suite-wide settings: offscreen Qt, no egress, one torch thread, shared fixtures."""

from __future__ import annotations

import os

# Before anything imports Qt or Hugging Face libraries.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.pop("APPLIANCE_PASSPHRASE", None)

from appliance import offline

offline.enforce()

pytest_plugins = ["tests.helpers.fixtures"]
