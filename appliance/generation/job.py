"""The ``generate`` job: a chat session in a child process (see :mod:`.protocol`).

Params: ``adapters`` (references to load, in order; may be empty), ``model`` (a base model
name: needed when no adapter is given, checked against the adapters' base otherwise). The
parent hands over the data key of each adapter object (:func:`appliance.generation.request`).

A ``load`` command adds adapter versions of the same base model while the session runs, with
the keys of their objects (:func:`appliance.generation.request.load_command`).

Result data: ``{"answers": N}``, the number of answers given, once stdin closes.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from appliance import adapters
from appliance.errors import ApplianceError, UsageError
from appliance.generation.engine import Answer, Engine
from appliance.generation.plan import MAX_ADAPTERS, LoadPlan, plan
from appliance.generation.protocol import (
    EVENT_ADDED,
    EVENT_ANSWER,
    EVENT_ERROR,
    EVENT_LOADED,
    EVENT_TOKEN,
    Generate,
    Load,
    Stop,
    parse_command,
)
from appliance.jobs.child import JobContext
from appliance.jobs.request import KeyRing, key_ring

POLL_S = 0.5


def load_engine(ctx: JobContext, refs: list[str], model: str | None) -> tuple[Engine, LoadPlan]:
    """Check what to load against the registry, decrypt the adapters with the keys handed over,
    and load the base with them (progress stages ``checking``, ``loading``)."""
    import torch

    from appliance.quiet import quiet_libraries
    from appliance.training.worker import choose_threads

    torch.set_num_threads(choose_threads(None))
    ctx.progress(0, 0, "checking")
    with ctx.registry() as reg:
        loaded = plan(ctx.ws, reg, refs, model)
    weights = _decrypt(loaded, ctx.keys, set())
    ctx.progress(0, 0, "loading")
    with quiet_libraries():
        engine = Engine.load(loaded.folder, weights)
    return engine, loaded


class CommandReader:
    """Reads command lines on a thread, so a ``stop`` reaches a running answer.

    ``generate`` and ``load`` commands (and the errors of lines that are not commands) queue up
    in order; a ``stop`` sets :attr:`stop` while an answer is being generated and is dropped
    otherwise.
    """

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.queue: queue.Queue[Generate | Load | ApplianceError | None] = queue.Queue()
        self.busy = threading.Event()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="commands", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.ctx.next_command()
                if data is None:
                    break
                command = parse_command(data)
            except ApplianceError as exc:
                self.queue.put(exc)
                continue
            except Exception as exc:  # a malformed command must not silence the session
                self.queue.put(UsageError(f"a command could not be read ({exc})"))
                continue
            if isinstance(command, Stop):
                if self.busy.is_set():
                    self.stop.set()
            else:
                self.queue.put(command)
        self.queue.put(None)

    def next(self) -> Generate | Load | ApplianceError | None:
        """The next command (or a bad line's error); None once stdin closed."""
        while True:
            try:
                # A timeout keeps the main thread where SIGTERM can interrupt it at once.
                return self.queue.get(timeout=POLL_S)
            except queue.Empty:
                continue


def generate(ctx: JobContext) -> dict[str, Any]:
    """Handler of the ``generate`` job kind."""
    import time

    refs = [str(r) for r in ctx.params.get("adapters") or []]
    model = ctx.params.get("model")
    started = time.perf_counter()
    engine, loaded = load_engine(ctx, refs, str(model) if model else None)
    aliases = loaded.refs()
    ctx.output(
        event=EVENT_LOADED,
        base_model=loaded.model["name"],
        adapters=list(dict.fromkeys(aliases.values())),
        aliases=aliases,
        device=engine.device,
        precision=engine.precision,
        context_length=engine.context_length,
        seconds=round(time.perf_counter() - started, 3),
    )
    reader = CommandReader(ctx)
    reader.start()
    answered = 0
    while (item := reader.next()) is not None:
        if isinstance(item, ApplianceError):
            ctx.output(event=EVENT_ERROR, id="", message=str(item), kind=_kind(item))
            continue
        try:
            if isinstance(item, Load):
                _add(ctx, engine, str(loaded.model["name"]), aliases, item)
                continue
            _answer(ctx, engine, aliases, item, reader)
            answered += 1
        except ApplianceError as exc:
            ctx.output(event=EVENT_ERROR, id=item.id, message=str(exc), kind=_kind(exc))
    return {"answers": answered}


def _decrypt(loaded: LoadPlan, keys: KeyRing, skip: set[str]) -> list[tuple[str, Any]]:
    """``(NAME@N, weights)`` of each adapter of ``loaded`` not in ``skip``, decrypted with
    ``keys``, each version once."""
    weights = []
    seen = set(skip)
    for stored in loaded.adapters.values():
        if stored.record["ref"] in seen:
            continue
        seen.add(stored.record["ref"])
        blob = keys.read(stored.path, stored.object_id, stored.what)
        weights.append((stored.record["ref"], adapters.unpack_stored(stored, blob)))
        del blob
    return weights


def _add(
    ctx: JobContext, engine: Engine, base: str, aliases: dict[str, str], command: Load
) -> None:
    """Load more adapters of the session's base model (a ``load`` command)."""
    import time

    from appliance.quiet import quiet_libraries

    started = time.perf_counter()
    try:
        keys = key_ring(command.keys)
    except (ValueError, TypeError, AttributeError):
        raise UsageError("the load command's keys are not hex keys by object id") from None
    with ctx.registry() as reg:
        # The base is loaded already: its files were checked when it was.
        more = plan(ctx.ws, reg, command.adapters, base, check_files=False)
    wanted = set(engine.columns) | set(more.refs().values())
    if len(wanted) > MAX_ADAPTERS:
        raise UsageError(
            f"this session would hold {len(wanted)} adapters, more than {MAX_ADAPTERS}; start a "
            "new session with the versions to compare"
        )
    with quiet_libraries():
        for ref, weights in _decrypt(more, keys, set(engine.columns)):
            engine.add(ref, weights)
    aliases.update(more.refs())
    ctx.output(
        event=EVENT_ADDED,
        id=command.id,
        adapters=list(dict.fromkeys(more.refs().values())),
        aliases=more.refs(),
        seconds=round(time.perf_counter() - started, 3),
    )


def _answer(
    ctx: JobContext,
    engine: Engine,
    aliases: dict[str, str],
    command: Generate,
    reader: CommandReader,
) -> Answer:
    adapter = None
    if command.adapter is not None:
        adapter = aliases.get(command.adapter, command.adapter)
    prompt = engine.prompt_ids(command.messages, command.settings.system_prompt)

    def on_token(index: int, text: str) -> None:
        ctx.output(event=EVENT_TOKEN, id=command.id, adapter=adapter, index=index, text=text)

    reader.stop.clear()
    reader.busy.set()
    try:
        answer = engine.generate(
            prompt,
            adapter,
            command.settings,
            on_token=on_token,
            should_stop=reader.stop.is_set,
        )
    finally:
        reader.busy.clear()
    ctx.output(event=EVENT_ANSWER, id=command.id, adapter=adapter, **answer.figures())
    return answer


def _kind(exc: ApplianceError) -> str:
    return "usage" if isinstance(exc, UsageError) else "error"
