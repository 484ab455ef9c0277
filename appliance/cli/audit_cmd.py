"""``appliance verify`` and ``appliance audit``: integrity of the registry, artifacts and log."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from appliance.cli.context import out, print_json, state
from appliance.errors import IntegrityError


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.command("verify")(verify)
    app.command("audit")(audit)


def verify(
    ctx: typer.Context,
    rebuild_index: bool = typer.Option(
        False,
        "--rebuild-index",
        help="First rebuild the registry from the folders' metadata: add missing rows to a "
        "healthy registry, or replace a damaged one (kept aside) with one built beside it.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Check the registry, every artifact's sha256, the key slots, the audit chain and every
    file in the workspace; exit 1 on any finding."""
    from appliance.registry.rebuild import rebuild_index as rebuild
    from appliance.vault import has_vault
    from appliance.verify import verify_workspace

    st = state(ctx)
    ws = st.workspace()
    actions: list[str] = []
    if rebuild_index:
        with ws.writer("verify --rebuild-index"):
            # The vault never depends on the registry: a damaged registry still gets its key.
            key = st.vault(ws).audit_key if has_vault(ws) else None
            actions = rebuild(ws, key)
    with st.registry(ws, readonly=True) as reg:
        report = verify_workspace(ws, reg)
    if json_out:
        print_json({**report.as_dict(), "rebuild_actions": actions})
    else:
        for action in actions:
            out.print(f"rebuild: {action}", markup=False)
        for section in report.sections:
            mark = "ok" if not section.findings else f"{len(section.findings)} problem(s)"
            out.print(f"{section.title}: {section.checked} checked, {mark}", markup=False)
            for finding in section.findings:
                out.print(f"  FAIL {finding}", markup=False)
            for warning in section.warnings:
                out.print(f"  warn {warning}", markup=False)
        if report.ok:
            out.print("verify: all checks passed")
    if not report.ok:
        count = len(report.findings)
        hint = ""
        first = report.findings[0]
        if "rebuild-index" not in first and any("--rebuild-index to" in f for f in report.findings):
            hint = "; the registry needs 'appliance verify --rebuild-index'"
        raise IntegrityError(f"verify found {count} problem(s); the first: {first}{hint}")


def audit(
    ctx: typer.Context,
    limit: int | None = typer.Option(None, "--limit", "-n", min=0, help="Only the last N rows."),
    action: str | None = typer.Option(
        None, "--action", help="Only rows of this action (e.g. model, adapter.tag)."
    ),
    acknowledge: bool = typer.Option(
        False,
        "--acknowledge",
        help="Record in the log that you have seen its current breaks, so commands that write "
        "work again (the breaks stay visible as acknowledged).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array of rows."),
) -> None:
    """List the audit log and verify its hash chain; exit 1 if the chain is broken."""
    st = state(ctx)
    ws = st.workspace()
    if acknowledge:
        with ws.writer("audit --acknowledge"), st.registry(ws) as reg:
            seen = reg.acknowledge_audit_break()
        if not seen:
            out.print("the audit chain is intact; there is nothing to acknowledge")
        for seq, what in seen:
            out.print(f"acknowledged audit row {seq}: {what}", markup=False)
    with st.registry(ws, readonly=True) as reg:
        chain = reg.verify_audit()
        rows = reg.audit_rows(limit=limit, action=action)
    bad = {seq for seq, _ in chain.problems}
    acked = {seq for seq, _ in chain.acknowledged}
    if json_out:
        print_json([{**r, "ok": r["seq"] not in bad} for r in rows])
    else:
        table = Table("#", "time", "user", "action", "object", "details", "chain")
        for r in rows:
            mark = "keyed" if r["keyed"] else "ok"
            if r["seq"] in acked:
                mark = "ACK"
            table.add_row(
                str(r["seq"]),
                r["time"][:19].replace("T", " "),
                r["user"],
                r["action"],
                r["object"],
                json.dumps(r["details"], sort_keys=True),
                "BAD" if r["seq"] in bad else mark,
            )
        out.print(table)
        for seq, what in chain.acknowledged:
            out.print(f"  acknowledged audit row {seq}: {what}", markup=False)
        if chain.ok:
            keyed = f", {chain.keyed_rows} keyed (HMAC)" if chain.keyed_rows else ""
            if chain.acknowledged:
                out.print(
                    f"audit chain: {chain.rows} rows{keyed}; {len(chain.acknowledged)} "
                    "acknowledged break(s), none since"
                )
            else:
                out.print(f"audit chain intact: {chain.rows} rows{keyed}")
    if not chain.ok:
        for seq, what in chain.problems:
            out.print(f"  FAIL audit row {seq}: {what}", markup=False)
        seq, what = chain.problems[0]
        raise IntegrityError(
            f"the audit log was tampered with; first bad row: #{seq}: {what} "
            "(restore the registry from backup and find out who changed it; 'appliance audit "
            "--acknowledge' records that you have seen it, so commands can write again)"
        )
