"""The promotion gate: the ``production`` tag moves only to a version that is no worse.

When an adapter name has a golden set (``appliance adapter golden``), tagging a version
``production`` needs figures of that version and of the version now in production, computed on
the golden set's current dataset version (all rows), with the same settings and precision, and
the candidate's figure on the name's metric no worse than the incumbent's: answer loss no higher,
or contains-match no lower. Otherwise the tag is refused with both figures, unless an override
reason is given, which goes into the audit row with the OS user.

Figures are never trusted across golden set versions: a stored result counts only for the
dataset version and sha256 it was computed on (and the adapter's sha256). :func:`check` says
which versions need scoring (``missing``); the caller runs an ``eval`` job for them (the CLI at
once, the desktop app through its job runner) and checks again. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError, NotFoundError, UsageError
from appliance.evaluation.metrics import comparable
from appliance.registry import Registry
from appliance.registry.rows import AdapterVersionRow, EvaluationRow, GoldenSetRow, TagMove

PRODUCTION = "production"
RELATIVE_TOLERANCE = 1e-6
"""Figures this close count as equal (the same version scored twice gives the same loss)."""


class GateRefused(ApplianceError):
    """The production tag was refused by the golden-set gate."""


@dataclass
class GateCheck:
    """What the gate says about moving ``tag`` to version ``ref``."""

    ref: str
    """The candidate, ``NAME@N``."""
    tag: str
    golden: GoldenSetRow | None = None
    """The adapter name's golden set (``reg.golden_sets.get``); None: ungated."""
    production: str | None = None
    """The version now tagged production, when another one."""
    candidate: float | None = None
    incumbent: float | None = None
    evaluations: dict[str, int] = field(default_factory=dict)
    """The stored results the figures come from, by version."""
    missing: list[str] = field(default_factory=list)
    """Versions to score on the golden set before the gate can decide."""
    stale: list[str] = field(default_factory=list)
    """Golden set versions (``D@V``) of older figures that no longer count."""
    problem: str | None = None
    """Why the gate cannot pass whatever is scored (the golden set is unusable)."""
    already: bool = False
    """The candidate is the version in production: nothing to compare."""

    @property
    def gated(self) -> bool:
        return self.golden is not None and self.tag == PRODUCTION

    @property
    def metric(self) -> str:
        return str(self.golden["metric"]) if self.golden else "answer_loss"

    @property
    def decided(self) -> bool:
        """Whether the figures are all there (or no comparison is needed)."""
        return not self.gated or self.already or (not self.missing and self.problem is None)

    @property
    def passed(self) -> bool:
        if not self.gated or self.already:
            return True
        if not self.decided or self.candidate is None:
            return False
        if self.production is None:
            return True
        assert self.incumbent is not None
        return no_worse(self.metric, self.candidate, self.incumbent)

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for the audit row and ``--json``."""
        return {
            "golden_set": self.golden["dataset"] if self.golden else None,
            "metric": self.metric,
            "candidate": self.ref,
            "candidate_figure": self.candidate,
            "production": self.production,
            "production_figure": self.incumbent,
            "evaluations": self.evaluations,
            "passed": self.passed,
        }

    def refusal(self) -> str:
        """Why the tag is refused, with both figures, and what to do."""
        how = 'or tag it anyway with --override "REASON" (recorded in the audit log)'
        if self.problem is not None:
            return f"{self.problem}; {how}"
        assert self.golden is not None
        golden = self.golden["dataset"]
        if self.missing:
            stale = (
                f" (figures on {', '.join(self.stale)} are stale: the golden set is now {golden})"
                if self.stale
                else ""
            )
            return (
                f"no current figures of {', '.join(self.missing)} on golden set {golden}{stale}; "
                f"run 'appliance eval {self.ref} --dataset {golden} --split all', {how}"
            )
        return (
            f"refused: {self.ref} has {describe_metric(self.metric, self.candidate)} on golden set "
            f"{golden}, worse than {self.production} in production "
            f"({describe_metric(self.metric, self.incumbent)}); improve the adapter, {how}"
        )


def describe_metric(metric: str, value: float | None) -> str:
    """A golden-set figure in words (``contains-match 83.0%``, ``answer loss 1.2345``)."""
    if value is None:
        return f"no {metric}"
    if metric == "contains":
        return f"contains-match {value:.1%}"
    return f"answer loss {value:.4f}"


def no_worse(metric: str, candidate: float, incumbent: float) -> bool:
    """Answer loss no higher, or contains-match no lower, than the incumbent's."""
    slack = RELATIVE_TOLERANCE * max(abs(candidate), abs(incumbent), 1e-12)
    if metric == "contains":
        return candidate >= incumbent - slack
    return candidate <= incumbent + slack


def check(reg: Registry, ref: str, tag: str = PRODUCTION) -> GateCheck:
    """What the gate says about tagging ``ref`` with ``tag`` now (reads the registry only).

    Raises:
        NotFoundError: no such adapter version.
    """
    adapter = reg.adapters.version(ref)
    result = GateCheck(ref=adapter["ref"], tag=tag)
    if tag != PRODUCTION:
        return result
    golden = reg.golden_sets.get(adapter["name"])
    result.golden = golden
    if golden is None:
        return result
    if golden["deleted_at"]:
        result.problem = (
            f"the golden set {golden['dataset']} of {adapter['name']} was deleted; attach "
            f"another with 'appliance adapter golden {adapter['name']} --dataset D@V'"
        )
        return result
    try:
        incumbent = reg.adapters.version(f"{adapter['name']}@{PRODUCTION}")
    except NotFoundError:
        incumbent = None
    if incumbent is not None and incumbent["id"] == adapter["id"]:
        result.already = True
        return result
    if incumbent is not None:
        result.production = incumbent["ref"]
    candidate_rows = _usable(reg, adapter, golden, result)
    latest = candidate_rows[-1] if candidate_rows else None
    production_row = None
    if latest is not None and result.production is not None:
        assert incumbent is not None
        key = comparable(latest["settings"])
        same = [
            r for r in _usable(reg, incumbent, golden, result) if comparable(r["settings"]) == key
        ]
        production_row = same[-1] if same else None
    if latest is None or (result.production is not None and production_row is None):
        # Score both together, so their figures share settings and precision.
        result.missing = [result.ref, *([result.production] if result.production else [])]
        return result
    result.candidate = _figure(latest, result.metric)
    result.evaluations[result.ref] = int(latest["id"])
    if production_row is not None and result.production is not None:
        result.incumbent = _figure(production_row, result.metric)
        result.evaluations[result.production] = int(production_row["id"])
    if result.metric == "contains" and (
        result.candidate is None or (result.production is not None and result.incumbent is None)
    ):
        result.problem = (
            f"golden set {golden['dataset']} has no short reference answers, so contains-match "
            f"cannot be computed; choose answer loss with 'appliance adapter golden "
            f"{adapter['name']} --dataset {golden['dataset']} --metric answer_loss'"
        )
    return result


def promote(
    reg: Registry, ref: str, tag: str = PRODUCTION, *, override: str | None = None
) -> tuple[TagMove, GateCheck]:
    """Move ``tag`` to ``ref`` if the gate passes (or with an override reason), audited.

    The gate is checked again inside the transaction that moves the tag, so a version tagged
    production meanwhile cannot slip past it.

    Returns:
        ``reg.tags.set``'s result and the gate's check.

    Raises:
        UsageError: an empty override reason.
        GateRefused: the gate did not pass and no override was given.
    """
    if override is not None and not override.strip():
        raise UsageError('--override needs a reason, e.g. --override "hotfix approved by J. Doe"')
    with reg.transaction():
        result = check(reg, ref, tag)
        details: dict[str, Any] = {}
        if result.gated:
            details["gate"] = result.summary()
        if not result.passed:
            if override is None:
                raise GateRefused(result.refusal())
            details["override"] = override.strip()
        elif override is not None:
            details["override"] = override.strip()
        moved = reg.tags.set(result.ref, tag, details=details)
    return moved, result


def _usable(
    reg: Registry, adapter: AdapterVersionRow, golden: GoldenSetRow, result: GateCheck
) -> list[EvaluationRow]:
    """The stored results of ``adapter`` that count for the golden set now, oldest first;
    results on other versions of the golden dataset are noted as stale."""
    usable = []
    for row in reg.evaluations.all(adapter["ref"]):
        if row["split"] != "all":
            continue
        if row["dataset_version_id"] != golden["dataset_version_id"]:
            same_name = row["dataset"].partition("@")[0] == golden["dataset_name"]
            if same_name and row["dataset"] not in result.stale:
                result.stale.append(row["dataset"])
            continue
        if row["dataset_sha256"] == golden["sha256"] and row["adapter_sha256"] == adapter["sha256"]:
            usable.append(row)
    return usable


def _figure(row: EvaluationRow, metric: str) -> float | None:
    value = row["metrics"].get(metric)
    return float(value) if isinstance(value, int | float) else None
