"""``appliance chat``: talk to an adapter version (or its base model) in a terminal.

The model runs in a ``generate`` job, the child the desktop's Playground drives too; this
command keeps the conversation, sends it with each question and prints the answer as it
streams. In a chat, ``/reset`` forgets the conversation, ``/system TEXT`` sets the system
prompt, Ctrl-C stops an answer, Ctrl-D (or Ctrl-C at the prompt) ends. With ``--prompt`` it
answers once and exits (``--json`` gives the text and token counts).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import typer

from appliance.cli.context import err, print_json, state
from appliance.errors import ApplianceError
from appliance.generation.client import GenerationSession
from appliance.generation.protocol import EVENT_ANSWER, EVENT_TOKEN, Generate, check_messages
from appliance.generation.settings import GenerationSettings

HELP = "/reset forgets the conversation, /system TEXT sets the system prompt, Ctrl-D ends."


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.command("chat")(chat)


def chat(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Adapter version: NAME, NAME@N or NAME@TAG."),
    base_only: bool = typer.Option(
        False, "--base-only", help="Answer with the adapter's base model alone."
    ),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Answer this once and exit."),
    system: str = typer.Option("", "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy; above 0 samples."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sampling: keep this much probability."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling: the seed."),
    json_out: bool = typer.Option(False, "--json", help="With --prompt: print one JSON object."),
) -> None:
    """Chat with an adapter version (tokens stream as they come); --prompt answers once."""
    from appliance.generation.plan import plan
    from appliance.generation.request import generate_request

    settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        system_prompt=system,
    )
    if prompt is not None:
        check_messages([{"role": "user", "content": prompt}])
    elif json_out:
        raise typer.BadParameter("--json goes with --prompt", param_hint="--json")
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with st.registry(ws, unlock=False) as reg:
        if base_only:
            base = plan(ws, reg, [ref], check_files=False).model["name"]
            request, loaded = generate_request(vault, reg, [], model=base)
        else:
            request, loaded = generate_request(vault, reg, [ref])
    adapter = None if base_only else loaded.refs()[ref]
    with GenerationSession(request) as session:
        if prompt is None and sys.stdin.isatty():
            err.print("Loading the model...", markup=False)
        info = session.start()
        if prompt is not None:
            _answer_once(session, adapter, prompt, settings, json_out, info)
        else:
            _converse(session, adapter, settings, info)


def _answer_once(
    session: GenerationSession,
    adapter: str | None,
    prompt: str,
    settings: GenerationSettings,
    json_out: bool,
    info: dict[str, Any],
) -> None:
    messages = [{"role": "user", "content": prompt}]
    answer: dict[str, Any] = {}
    for data in session.ask(Generate("", adapter, messages, settings)):
        if data["event"] == EVENT_TOKEN and not json_out:
            sys.stdout.write(data["text"])
            sys.stdout.flush()
        elif data["event"] == EVENT_ANSWER:
            answer = data
    if json_out:
        print_json(
            {
                "adapter": adapter,
                "base_model": info["base_model"],
                **{k: v for k, v in answer.items() if k not in ("event", "id")},
            }
        )
    else:
        sys.stdout.write("\n")


def _converse(
    session: GenerationSession,
    adapter: str | None,
    settings: GenerationSettings,
    info: dict[str, Any],
) -> None:
    who = adapter or f"base model {info['base_model']}"
    err.print(
        f"Chatting with {who} ({info['precision']} on {info['device']}). {HELP}", markup=False
    )
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = []
            err.print("(conversation forgotten)", markup=False)
            continue
        if text == "/system" or text.startswith("/system "):
            settings = settings.replace(system_prompt=text[len("/system") :].strip())
            history = []
            err.print("(system prompt set; conversation forgotten)", markup=False)
            continue
        if text.startswith("/"):
            err.print(f"unknown command {text.split()[0]}; {HELP}", markup=False)
            continue
        messages = [*history, {"role": "user", "content": line}]
        try:
            answer = _stream(session, Generate("", adapter, messages, settings))
        except ApplianceError as exc:
            err.print(f"error: {exc}", markup=False)
            if not session.alive:
                raise
            continue
        history = [*messages, {"role": "assistant", "content": answer["text"]}]


def _stream(session: GenerationSession, command: Generate) -> dict[str, Any]:
    """Print one answer as it streams; Ctrl-C stops it (the child ends it cleanly)."""
    answer: dict[str, Any] = {}
    sys.stdout.write("ai> ")
    sys.stdout.flush()
    with _ctrl_c_stops(session):
        for data in session.ask(command):
            if data["event"] == EVENT_TOKEN:
                sys.stdout.write(data["text"])
                sys.stdout.flush()
            elif data["event"] == EVENT_ANSWER:
                answer = data
    stopped = " (stopped)" if answer.get("finish") == "stopped" else ""
    sys.stdout.write("\n")
    speed = answer.get("tokens_per_s", 0)
    err.print(
        f"[{answer.get('tokens', 0)} tokens, {speed:.1f} tokens/s{stopped}]",
        markup=False,
        style="dim",
    )
    return answer


@contextlib.contextmanager
def _ctrl_c_stops(session: GenerationSession) -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        session.stop_answer()

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
