"""The conversation with a ``generate`` job: its request, its commands, its output events.

The job is interactive (:class:`appliance.jobs.JobRequest` with ``interactive=True``). Its
request's params name what to load::

    {"adapters": ["legal@2", "legal@3"], "model": null}   # model: base only, by name

It loads the base model once with every adapter beside it, sends ``{"event": "loaded", ...}``
and then answers one command line at a time until stdin closes:

``{"op": "generate", "id": "q1", "adapter": "legal@2"|null, "messages": [...], "settings": {}}``
    streams ``{"event": "token", "id", "adapter", "index", "text"}`` events (``text`` is the new
    piece of the answer; joined in order they are the answer) and ends with one
    ``{"event": "answer", "id", "adapter", "text", "finish", "prompt_tokens", "tokens",
    "seconds", "tokens_per_s"}``. ``adapter`` null means the base model alone; ``finish`` is
    ``eos`` (the model ended its turn), ``length`` (max_new_tokens or the context reached) or
    ``stopped``. A command the job cannot answer (an empty prompt, a prompt longer than the
    context, an adapter it did not load) gets ``{"event": "error", "id", "message", "kind"}``
    and the session goes on.
``{"op": "stop"}``
    ends the answer being generated (with ``finish: stopped``); ignored between answers.
``{"op": "load", "id", "adapters": ["legal@4"], "keys": {OBJECT_ID: HEX}}``
    loads more adapter versions of the same base model beside those loaded (the base is not
    loaded again), with the data keys of their objects (stdin is the secrets' channel, as for
    the request); answers ``{"event": "added", "id", "adapters", "aliases", "seconds"}``, or an
    ``error`` event. Comparing other versions thus never restarts the session.

Torch-free: the desktop app and the CLI build commands and read events with this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.errors import UsageError
from appliance.generation.settings import GenerationSettings

ROLES = ("system", "user", "assistant")
OP_GENERATE = "generate"
OP_STOP = "stop"
OP_LOAD = "load"

EVENT_LOADED = "loaded"
EVENT_TOKEN = "token"
EVENT_ANSWER = "answer"
EVENT_ERROR = "error"
EVENT_ADDED = "added"


def check_messages(messages: Any) -> list[dict[str, str]]:
    """A conversation that can be answered: ``{role, content}`` turns ending with the user's.

    Raises:
        UsageError: not a list of turns, an unknown role, no text, or an empty last prompt.
    """
    if not isinstance(messages, list) or not messages:
        raise UsageError("the conversation is empty; send at least one user message")
    checked: list[dict[str, str]] = []
    for number, turn in enumerate(messages, start=1):
        if not isinstance(turn, dict):
            raise UsageError(f"turn {number} of the conversation is not an object")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise UsageError(f"turn {number} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UsageError(f"turn {number} has no text (content must be a string)")
        if role == "system" and number != 1:
            raise UsageError(f"turn {number} is a system message; only the first turn may be one")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] != "user":
        raise UsageError("the conversation must end with the user's message, which is answered")
    if not checked[-1]["content"].strip():
        raise UsageError("the prompt is empty; type a question")
    return checked


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str) -> list[dict[str, str]]:
    """``messages`` with the settings' system prompt in front, unless they start with one."""
    if not system_prompt.strip() or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


@dataclass(frozen=True)
class Generate:
    """One ``generate`` command."""

    id: str
    """Chosen by the sender; every event of the answer carries it."""
    adapter: str | None
    """The adapter to answer with, as named in the request (None: the base model alone)."""
    messages: list[dict[str, str]]
    settings: GenerationSettings = field(default_factory=GenerationSettings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": OP_GENERATE,
            "id": self.id,
            "adapter": self.adapter,
            "messages": self.messages,
            "settings": self.settings.to_dict(),
        }


@dataclass(frozen=True)
class Stop:
    """Ends the answer being generated."""

    def to_dict(self) -> dict[str, Any]:
        return {"op": OP_STOP}


@dataclass(frozen=True)
class Load:
    """Loads more adapter versions (of the session's base model) beside those loaded."""

    id: str
    """Chosen by the sender; the ``added`` or ``error`` event carries it."""
    adapters: list[str]
    """References to load (``NAME``, ``NAME@N``, ``NAME@TAG``); those loaded already are kept."""
    keys: dict[str, str] = field(default_factory=dict, repr=False)
    """The data keys (hex) of their objects, by object id: exactly what the job may read."""

    def to_dict(self) -> dict[str, Any]:
        return {"op": OP_LOAD, "id": self.id, "adapters": self.adapters, "keys": self.keys}


def parse_command(data: dict[str, Any]) -> Generate | Stop | Load:
    """A command from its JSON object.

    Raises:
        UsageError: an unknown op, or a command whose fields are wrong.
    """
    op = data.get("op")
    if op == OP_STOP:
        return Stop()
    if op == OP_LOAD:
        return _parse_load(data)
    if op != OP_GENERATE:
        ops = ", ".join((OP_GENERATE, OP_STOP, OP_LOAD))
        raise UsageError(f"unknown command {op!r}; the commands are {ops}")
    adapter = data.get("adapter")
    if adapter is not None and not isinstance(adapter, str):
        raise UsageError("the command's adapter must be a reference such as legal@2, or null")
    settings = data.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise UsageError("the command's settings must be an object")
    return Generate(
        id=str(data.get("id", "")),
        adapter=adapter,
        messages=check_messages(data.get("messages")),
        settings=GenerationSettings.from_dict(settings),
    )


def _parse_load(data: dict[str, Any]) -> Load:
    adapters = data.get("adapters")
    if (
        not isinstance(adapters, list)
        or not adapters
        or not all(isinstance(a, str) and a for a in adapters)
    ):
        raise UsageError('a load command names adapters as a list such as ["legal@2"]')
    keys = data.get("keys") or {}
    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in keys.items()
    ):
        raise UsageError("a load command's keys must map object ids to hex keys")
    return Load(id=str(data.get("id", "")), adapters=list(adapters), keys=dict(keys))
