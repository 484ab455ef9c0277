"""Compare adapter versions side by side: settings, data, results and loss curves.

:func:`compare_versions` lines up two or more versions' training configurations field by field
(nested settings flattened to dotted names such as ``optim.learning_rate``), their final
metrics, whether they share the base model and the data (by sha256, not by name), and the loss
curves replayed from each run's ``metrics.jsonl``. Curves carry step, epoch and tokens seen per
point, so runs on datasets of different sizes can be set against each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import UsageError
from appliance.events import EventError
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training.lineage import Lineage, lineage_of

MISSING: Any = None
"""The value shown for a field one version's configuration does not have."""


@dataclass(frozen=True)
class CurvePoint:
    """One point of a loss curve."""

    step: int
    epoch: float
    tokens_seen: int | None
    """Training tokens processed up to this step (None when the run did not report them)."""
    loss: float
    """NaN where the run diverged."""


@dataclass(frozen=True)
class Curves:
    """The train and eval loss of one run, as recorded in its ``metrics.jsonl``."""

    train: tuple[CurvePoint, ...] = ()
    eval: tuple[CurvePoint, ...] = ()
    problem: str | None = None
    """Why there are no (or only some) points: no run folder, an unreadable file."""


def run_curves(folder: Path | None) -> Curves:
    """Replay a run folder's ``metrics.jsonl`` into its loss curves.

    A resumed run repeats the steps after its last checkpoint: the later launch's point wins.
    Eval points get the epoch and tokens seen of the step they were taken at (step 0: before
    training).
    """
    if folder is None:
        return Curves(problem="no training run is recorded for this version")
    path = folder / ev.METRICS_FILE
    steps: dict[int, CurvePoint] = {}
    evals: dict[int, float] = {}
    problem = None
    try:
        for event in ev.replay(path):
            if isinstance(event, ev.Step):
                steps[event.step] = CurvePoint(
                    event.step, event.epoch, event.tokens_seen, _loss(event.loss)
                )
            elif isinstance(event, ev.Eval):
                evals[event.step] = _loss(event.eval_loss)
    except FileNotFoundError:
        problem = f"{path} is missing"
    except (OSError, EventError) as exc:
        problem = f"{path} could not be read to the end ({exc})"
    eval_points = []
    for step, loss in sorted(evals.items()):
        at = steps.get(step)
        if at is not None:
            eval_points.append(CurvePoint(step, at.epoch, at.tokens_seen, loss))
        elif step == 0:
            eval_points.append(CurvePoint(0, 0.0, 0, loss))
        else:
            eval_points.append(CurvePoint(step, math.nan, None, loss))
    return Curves(tuple(steps[s] for s in sorted(steps)), tuple(eval_points), problem)


def _loss(value: float | None) -> float:
    return math.nan if value is None else float(value)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted names: ``{"lora": {"rank": 8}}`` -> ``{"lora.rank": 8}``.

    Lists stay values (``lora.target_modules``), compared as a whole.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class ValueRow:
    """One field across the compared versions."""

    key: str
    values: tuple[Any, ...]
    """One per version, in the comparison's order; :data:`MISSING` where a version lacks it."""

    @property
    def differs(self) -> bool:
        first = self.values[0]
        return any(not _same(first, v) for v in self.values[1:])


def _same(a: Any, b: Any) -> bool:
    """Equal values; 1 and 1.0 are the same setting, True and 1 are not, NaN equals NaN."""
    if _numeric(a) and _numeric(b):
        return bool(a == b) or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and bool(a == b)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rows(dicts: Sequence[dict[str, Any]]) -> tuple[ValueRow, ...]:
    keys: list[str] = []
    for d in dicts:
        keys.extend(k for k in d if k not in keys)
    return tuple(ValueRow(k, tuple(d.get(k, MISSING) for d in dicts)) for k in sorted(keys))


@dataclass(frozen=True)
class Comparison:
    """Two or more adapter versions side by side."""

    versions: tuple[Lineage, ...]
    config: tuple[ValueRow, ...]
    """Every training setting (flattened), sorted by name; the seed included."""
    metrics: tuple[ValueRow, ...]
    """Final metrics, sorted by name."""
    curves: tuple[Curves, ...]
    """One per version."""

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(v.ref for v in self.versions)

    @property
    def config_differences(self) -> tuple[ValueRow, ...]:
        """Only the settings whose values differ between versions."""
        return tuple(row for row in self.config if row.differs)

    @property
    def same_base(self) -> bool:
        """All versions were trained on the same base model bytes (sha256)."""
        digests = {v.base_model.sha256 if v.base_model else None for v in self.versions}
        return len(digests) == 1 and None not in digests

    @property
    def same_data(self) -> bool:
        """All versions were trained on the same dataset bytes (sha256)."""
        digests = {v.dataset.sha256 if v.dataset else None for v in self.versions}
        return len(digests) == 1 and None not in digests


def compare_versions(reg: Registry, refs: Sequence[str]) -> Comparison:
    """Line up adapter versions ``refs`` (two or more, deleted ones included).

    Raises:
        UsageError: fewer than two distinct versions.
        NotFoundError: one of them does not exist.
    """
    lineages: list[Lineage] = []
    for ref in refs:
        lineage = lineage_of(reg, ref)
        if lineage.ref not in [v.ref for v in lineages]:
            lineages.append(lineage)
    if len(lineages) < 2:
        raise UsageError("choose at least two different adapter versions to compare")
    configs = [{**flatten(v.config), "seed": v.seed} for v in lineages]
    return Comparison(
        versions=tuple(lineages),
        config=_rows(configs),
        metrics=_rows([dict(v.metrics) for v in lineages]),
        curves=tuple(run_curves(v.run.folder if v.run else None) for v in lineages),
    )
