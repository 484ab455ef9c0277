"""Verb groups that later parts of the appliance fill in.

Each answers "not available yet" cleanly (exit 1, one line) until its module replaces it.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from appliance.errors import NotAvailableError

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def group(name: str, help_text: str, verbs: dict[str, str]) -> typer.Typer:
    """A Typer group whose subcommands all report that they are not available yet."""
    sub = typer.Typer(name=name, help=help_text, no_args_is_help=True)
    for verb, verb_help in verbs.items():
        sub.command(verb, help=verb_help, context_settings=_PASS_THROUGH)(
            _not_available(f"{name} {verb}")
        )
    return sub


def command(app: typer.Typer, name: str, help_text: str) -> None:
    """Register a top-level verb that reports that it is not available yet."""
    app.command(name, help=help_text, context_settings=_PASS_THROUGH)(_not_available(name))


def _not_available(verb: str) -> Callable[[typer.Context], None]:
    def run(ctx: typer.Context) -> None:
        raise NotAvailableError(verb)

    run.__name__ = verb.replace(" ", "_")
    return run
