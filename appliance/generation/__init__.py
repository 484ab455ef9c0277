"""Generation: chat with a base model and adapter versions side by side, in a child process.

- :mod:`.settings`: :class:`GenerationSettings` (greedy by default; temperature, top-p, max new
  tokens, seed, system prompt).
- :mod:`.protocol`: the ``generate`` job's commands and output events (torch-free).
- :mod:`.plan`: which base model and adapter objects a session loads, checked (torch-free).
- :mod:`.request` / :mod:`.client`: the parent side: build the job, drive it (torch-free).
- :mod:`.engine`: the loaded model, adapter switching and the decoding loop (torch).
- :mod:`.job`: the ``generate`` job kind's handler (runs in the child).

The desktop process imports only the torch-free modules.
"""

from __future__ import annotations

from appliance.generation.protocol import Generate, Stop, check_messages
from appliance.generation.settings import GenerationSettings

__all__ = ["Generate", "GenerationSettings", "Stop", "check_messages"]
