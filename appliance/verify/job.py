"""The ``verify`` job: ``appliance verify`` in a child process, for the desktop app.

Verifying re-hashes every model file, dataset, adapter and export: minutes on a large
workspace, so the desktop app runs it as a job and shows its report. The report is the CLI's
(:func:`~appliance.verify.verify_workspace`), with the audit chain's problems as
``(seq, what)`` pairs, so a view can point at the first bad row, and what to do about each
kind of finding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.verify import VerifyReport, verify_workspace

if TYPE_CHECKING:
    from appliance.jobs.child import JobContext

AUDIT_ADVICE = (
    "The audit log was changed outside the appliance, from row {seq} on: stop using this "
    "workspace, restore registry.sqlite from a backup made before {time}, and find out who "
    "changed it (the file is {path})."
)
ARTIFACT_ADVICE = (
    "Files in the workspace no longer match the registry: restore the named files from a "
    "backup; an export that was moved away can simply be exported again."
)
DATABASE_ADVICE = (
    "The registry database itself is damaged: run 'appliance verify --rebuild-index' to "
    "rebuild it from the workspace folders."
)


def advice(
    report: VerifyReport, audit_problems: list[tuple[int, str]], times: dict[int, str], path: str
) -> list[str]:
    """What to do about a report's findings, one sentence per kind (empty when all is well)."""
    lines: list[str] = []
    if audit_problems:
        seq = audit_problems[0][0]
        when = times.get(seq, "that row was written")
        lines.append(AUDIT_ADVICE.format(seq=seq, time=when[:19].replace("T", " "), path=path))
    titles = [s.title for s in report.sections if s.findings]
    if any(t.startswith("registry database") for t in titles):
        lines.append(DATABASE_ADVICE)
    if any(not t.startswith(("registry database", "audit log")) for t in titles):
        lines.append(ARTIFACT_ADVICE)
    return lines


def verify_job(ctx: JobContext) -> dict[str, Any]:
    """Verify the whole workspace: registry, every artifact's sha256, the audit chain.

    No params. Needs the audit key (``writes_registry=True``) to check a keyed chain; it
    writes nothing.

    Returns:
        ``ok``, ``sections`` (title, checked, findings, warnings) as ``appliance verify
        --json`` prints them, plus ``audit_problems`` (``[seq, what]`` in chain order, the first
        is the first bad row), ``first_bad_audit_row`` (seq or None) and ``advice`` (sentences
        saying what to do).
    """
    ctx.progress(0, 0, "verifying")
    with ctx.registry() as reg:
        report = verify_workspace(ctx.ws, reg)
        chain = reg.verify_audit()
        times = {row["seq"]: row["time"] for row in reg.audit_rows()} if chain.problems else {}
    problems = [(int(seq), str(what)) for seq, what in chain.problems]
    return {
        **report.as_dict(),
        "audit_problems": [list(p) for p in problems],
        "first_bad_audit_row": chain.first_bad,
        "advice": advice(report, problems, times, str(ctx.ws.registry_path)),
    }
