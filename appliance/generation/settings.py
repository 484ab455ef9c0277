"""Generation settings: one dataclass for the CLI, the desktop's side panel and the job.

Torch-free, so the desktop process can build and check settings before it starts a job.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NoReturn

from appliance.errors import UsageError

MAX_NEW_TOKENS_LIMIT = 8192


@dataclass(frozen=True)
class GenerationSettings:
    """How one answer is generated. The defaults give the same answer every time (greedy)."""

    max_new_tokens: int = 256
    """The answer stops after this many tokens (or earlier, at the model's end-of-turn)."""
    temperature: float = 0.0
    """0 is greedy decoding (always the most likely token); above 0 samples, hotter is wilder."""
    top_p: float = 1.0
    """When sampling: draw only from the most likely tokens whose probabilities add up to this."""
    seed: int | None = None
    """When sampling: the seed, so an answer can be drawn again; None draws a fresh one."""
    system_prompt: str = ""
    """Sent as the system message before the conversation (unless it starts with one)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            _fail("max_new_tokens must be a whole number")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            _fail(f"max_new_tokens is {self.max_new_tokens}; give 1 to {MAX_NEW_TOKENS_LIMIT}")
        if not isinstance(self.temperature, int | float) or not math.isfinite(self.temperature):
            _fail("temperature must be a number")
        if not 0 <= self.temperature <= 5:
            _fail(f"temperature is {self.temperature}; give 0 (greedy) to 5")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            _fail(f"top_p is {self.top_p}; give a number above 0 and at most 1")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            _fail("seed must be a whole number")
        if not isinstance(self.system_prompt, str):
            _fail("system_prompt must be text")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GenerationSettings:
        """Settings from a JSON object; unknown keys are refused by name.

        Raises:
            UsageError: an unknown key or a value out of range.
        """
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            names = ", ".join(sorted(known))
            _fail(f"unknown setting(s) {', '.join(unknown)}; the settings are {names}")
        if data.get("system_prompt") is None:
            data.pop("system_prompt", None)
        return cls(**data)

    def replace(self, **changes: Any) -> GenerationSettings:
        return dataclasses.replace(self, **changes)


def _fail(message: str) -> NoReturn:
    raise UsageError(f"invalid generation setting: {message}")
