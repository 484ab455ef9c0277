"""The lineage of one adapter version: run, base, data, settings, results, exports, evaluations.

A read-only view of a :class:`~appliance.training.lineage.Lineage` record. Each thing it names
links to where it lives: the dataset version (Datasets page), the run (Train page), the base
model (Models page); a click emits :attr:`LineageView.link_activated` and the window routes it.
"""

from __future__ import annotations

import html
import json
from typing import Any

from PySide6.QtCore import QUrl, Signal, Slot
from PySide6.QtWidgets import QTextBrowser, QVBoxLayout, QWidget

from appliance.registry.history import TagChange
from appliance.training.compare import flatten
from appliance.training.lineage import ExportRecord, Lineage
from appliance.units import format_bytes, format_count
from gui.style import ERROR_COLOUR

LINK_KINDS = ("dataset", "run", "model")


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _time(value: str | None) -> str:
    return "-" if not value else value[:19].replace("T", " ")


def _link(kind: str, target: str, text: str) -> str:
    return f'<a href="{kind}:{html.escape(target, quote=True)}">{html.escape(text)}</a>'


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def metric_text(name: str, value: Any) -> str:
    """A final metric for people: bytes, seconds and counts in their units."""
    if value is None:
        return "-"
    if name == "peak_memory" and isinstance(value, int | float):
        return format_bytes(value)
    if name == "wall_s" and isinstance(value, int | float):
        return _duration(float(value))
    if name == "tokens_seen" and isinstance(value, int):
        return f"{value:,}"
    return _value(value)


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><td style='color:#555;padding-right:14px'>{k}</td><td>{v}</td></tr>" for k, v in rows
    )
    return f"<table cellspacing='0' cellpadding='2'>{cells}</table>"


def _export_row(record: ExportRecord) -> tuple[str, str]:
    if record.passed is None:
        verdict = "recorded"
    elif record.passed:
        diff = record.max_abs_diff
        verdict = "verified" + (f", max |Δlogit| {diff:.3g}" if diff is not None else "")
    else:
        verdict = f"<span style='color:{ERROR_COLOUR}'>failed verification (removed)</span>"
    return (
        _time(record.created_at),
        f"{_e(record.format)} → <code>{_e(record.path)}</code> ({verdict})",
    )


def lineage_html(lineage: Lineage, tag_changes: list[TagChange] | None = None) -> str:
    """The lineage as the view shows it (HTML with links ``dataset:``, ``run:``, ``model:``)."""
    parts = [f"<h3 style='margin-bottom:2px'>{_e(lineage.ref)}</h3>"]
    facts = [
        ("tags", _e(", ".join(lineage.tags) or "-")),
        ("sha256", f"<code>{_e(lineage.sha256)}</code>"),
        ("created", f"{_time(lineage.created_at)} by {_e(lineage.created_by)}"),
    ]
    if lineage.deleted_at:
        facts.append(("deleted", f"<b>{_time(lineage.deleted_at)}</b> (weights removed)"))
    parts.append(_table(facts))

    run = lineage.run
    parts.append("<h4>Run</h4>")
    if run is None:
        parts.append("<p>No training run is recorded for this version.</p>")
    else:
        parts.append(
            _table(
                [
                    ("id", _link("run", run.id, run.id)),
                    ("state", _e(run.state)),
                    ("device", _e(run.device)),
                    ("wall time", _duration(run.wall_s)),
                    ("peak memory", _e(format_bytes(run.peak_memory))),
                    ("started", _time(run.started_at)),
                    ("finished", _time(run.finished_at)),
                ]
            )
        )
    base = lineage.base_model
    ds = lineage.dataset
    parts.append("<h4>Base model and data</h4>")
    rows = []
    if base is not None:
        params = f", {format_count(base.parameters)} parameters" if base.parameters else ""
        rows.append(
            (
                "base model",
                f"{_link('model', base.name, base.name)} ({_e(base.architecture)}{params})<br>"
                f"<code>sha256 {_e(base.sha256)}</code>",
            )
        )
    if ds is not None:
        gone = " <b>[deleted]</b>" if ds.deleted_at else ""
        size = f", {ds.rows:,} rows" if ds.rows is not None else ""
        rows.append(
            (
                "dataset",
                f"{_link('dataset', ds.ref, ds.ref)}{size}{gone}<br>"
                f"<code>sha256 {_e(ds.sha256)}</code>",
            )
        )
    parts.append(_table(rows) if rows else "<p>-</p>")

    parts.append("<h4>Final metrics</h4>")
    metrics = [(html.escape(k), _e(metric_text(k, v))) for k, v in sorted(lineage.metrics.items())]
    parts.append(_table(metrics) if metrics else "<p>-</p>")

    parts.append("<h4>Evaluations</h4>")
    if lineage.evaluations:
        evals = []
        for row in lineage.evaluations:
            scores = ", ".join(
                f"{html.escape(str(k))} {_e(_value(v))}"
                for k, v in sorted((row.get("metrics") or {}).items())
            )
            where = f"{row.get('dataset', '?')} ({row.get('split', '?')})"
            evals.append((_time(row.get("created_at")), f"{_e(where)}: {scores}"))
        parts.append(_table(evals))
    else:
        parts.append("<p style='color:#555'>No evaluation results recorded.</p>")

    parts.append("<h4>Training settings</h4>")
    settings = [(html.escape(k), _e(_value(v))) for k, v in sorted(flatten(lineage.config).items())]
    settings.append(("seed", _e(lineage.seed)))
    parts.append(_table(settings))

    parts.append("<h4>Libraries</h4>")
    libs = [(html.escape(k), _e(v)) for k, v in sorted(lineage.lib_versions.items())]
    parts.append(_table(libs) if libs else "<p>-</p>")

    parts.append("<h4>Exports</h4>")
    exports = [_export_row(r) for r in lineage.exports]
    parts.append(_table(exports) if exports else "<p style='color:#555'>Not exported yet.</p>")

    if tag_changes:
        parts.append(f"<h4>Tag history of {_e(lineage.name)}</h4>")
        changes = []
        for change in tag_changes:
            if change.action == "removed":
                what = f"{_e(change.tag)} removed"
            else:
                moved = f" (from @{change.previous})" if change.previous else ""
                what = f"{_e(change.tag)} → @{change.version}{moved}"
            changes.append((_time(change.time), f"{what} by {_e(change.user)}"))
        parts.append(_table(changes))
    return "".join(parts)


class LineageView(QWidget):
    """Shows one :class:`Lineage` (or a hint when none is selected)."""

    link_activated = Signal(str, str)
    """kind (``dataset``, ``run``, ``model``) and what it names (``NAME@V``, run id, name)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.lineage: Lineage | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.browser = QTextBrowser()
        self.browser.setObjectName("lineage")
        self.browser.setOpenLinks(False)
        self.browser.anchorClicked.connect(self._on_anchor)
        layout.addWidget(self.browser)
        self.show_lineage(None)

    def show_lineage(self, lineage: Lineage | None, tags: list[TagChange] | None = None) -> None:
        self.lineage = lineage
        if lineage is None:
            self.browser.setHtml("<p style='color:#555'>Select an adapter version.</p>")
            return
        self.browser.setHtml(lineage_html(lineage, tags))

    @Slot(QUrl)
    def _on_anchor(self, url: QUrl) -> None:
        kind, _, target = url.toString().partition(":")
        if kind in LINK_KINDS and target:
            self.link_activated.emit(kind, QUrl.fromPercentEncoding(target.encode()))
