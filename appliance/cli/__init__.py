"""The ``appliance`` command: the same verbs as the desktop app, for administrators' scripts.

Exit codes: 0 success, 2 usage error (usage on stderr), 1 any other failure with one clear line
on stderr and no traceback (``--debug`` shows one). A well-formed command refused for what it
finds (an export destination that exists or holds other files, an unknown name) exits 1.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import typer

from appliance import __version__, offline
from appliance.cli import (
    adapter_cmd,
    audit_cmd,
    chat_cmd,
    dataset_cmd,
    eval_cmd,
    export_cmd,
    model_cmd,
    network_cmd,
    passphrase_cmd,
    selftest_cmd,
    train_cmd,
)
from appliance.cli.context import CliState, err
from appliance.cli.gpu_cmd import gpu
from appliance.cli.workspace_cmd import init
from appliance.errors import ApplianceError
from appliance.registry.failures import is_damage

app = typer.Typer(
    name="appliance",
    help="Offline fine-tuning appliance: encrypted datasets, QLoRA training, adapters, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"appliance {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _global_options(
    ctx: typer.Context,
    home: Path | None = typer.Option(
        None,
        "--home",
        envvar="APPLIANCE_HOME",
        help="Workspace folder (default: APPLIANCE_HOME, else the user-data folder).",
        show_envvar=True,
    ),
    passphrase_file: Path | None = typer.Option(
        None,
        "--passphrase-file",
        help="Read the passphrase from this file (else APPLIANCE_PASSPHRASE, else a prompt).",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
    version: bool = typer.Option(  # noqa: ARG001 (Typer declares --version here; _version acts)
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = CliState(home=home, passphrase_file=passphrase_file, debug=debug)


app.command("init")(init)
dataset_cmd.register(app)
model_cmd.register(app)
train_cmd.register(app)
adapter_cmd.register(app)
chat_cmd.register(app)
eval_cmd.register(app)
export_cmd.register(app)
app.command("gpu")(gpu)
passphrase_cmd.register(app)
audit_cmd.register(app)
selftest_cmd.register(app)
network_cmd.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn every failure into an exit code."""
    offline.enforce()
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # Standalone mode: Typer prints usage errors (with usage) on stderr and exits 2.
        app(args=args, prog_name="appliance")
    except ApplianceError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("aborted")
        sys.exit(130)
    except sqlite3.Error as exc:
        # Registry blocks translate their own failures (with the file's path); this catches a
        # read outside one, so a damaged registry never reads as an internal error.
        if debug:
            raise
        damaged = "; run 'appliance verify' to check it" if is_damage(exc) else ""
        err.print(f"error: the registry failed ({exc}){damaged}", markup=False)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        err.print(
            f"internal error: {type(exc).__name__}: {exc}; rerun with --debug for details and "
            "report it",
            markup=False,
        )
        sys.exit(1)
