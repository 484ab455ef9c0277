"""``appliance selftest``: known-answer and environment checks of this installation."""

from __future__ import annotations

import typer

from appliance.cli.context import out, print_json
from appliance.errors import ApplianceError

_MARK = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def selftest(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
    core: bool = typer.Option(
        False,
        "--core",
        help="For a core install (no torch/transformers): skip, and say so, the checks of "
        "the training stack instead of failing them.",
    ),
) -> None:
    """Check cryptography, stored formats, dependencies, NVML and the no-egress guard.

    Exit 1 when any check fails.
    """
    # Imported here so that `appliance --help` stays fast and never pays for the checks.
    from appliance.selftest import run_selftest

    report = run_selftest(core=core)
    if as_json:
        print_json(report.to_dict())
    else:
        width = max(len(r.name) for r in report.results)
        for r in report.results:
            out.print(f"{_MARK[r.status]}  {r.name:<{width}}  {r.detail}", markup=False)
        out.print(
            f"{report.count('pass')} passed, {report.count('fail')} failed, "
            f"{report.count('skip')} skipped" + (" (core install)" if core else ""),
            markup=False,
        )
    if not report.ok:
        names = ", ".join(r.name for r in report.failed) or "no checks ran"
        raise ApplianceError(
            f"selftest failed: {report.count('fail')} check(s) failed ({names}); do not use this "
            "installation for private data until they pass"
        )


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.command("selftest")(selftest)
