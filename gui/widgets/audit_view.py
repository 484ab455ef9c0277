"""The audit log with filters, and Verify: the whole workspace checked in a child process.

Verify runs the core's ``appliance verify`` as the ``verify`` job (it re-hashes every model,
dataset, adapter and export: minutes on a large workspace) and shows its report. When the audit
chain is broken, the first bad row is selected and marked, and the report says what to do.
"""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance.errors import ApplianceError
from appliance.jobs import JobRequest
from appliance.registry.history import AuditFilter, AuditLog, audit_log
from appliance.unlocked import UnlockedWorkspace
from gui.process import JobProcess
from gui.style import ERROR_STYLE

COLUMNS = ("#", "Time (UTC)", "User", "Action", "Object", "Details")
ANY = "(any)"
BAD = QColor("#f8c9c9")
FIRST_BAD = QColor("#e06666")
VERIFY_HANG_S = 600.0
"""Hashing a large model sends no progress for a while: only a longer silence is reported."""


def report_text(data: dict[str, Any]) -> str:
    """The ``verify`` job's result as the report panel shows it."""
    lines = []
    for section in data.get("sections", []):
        problems = section.get("findings") or []
        mark = "ok" if not problems else f"{len(problems)} problem(s)"
        lines.append(f"{section['title']}: {section['checked']} checked, {mark}")
        lines += [f"  FAIL {f}" for f in problems]
        lines += [f"  warn {w}" for w in section.get("warnings") or []]
    if data.get("ok"):
        lines.append("")
        lines.append("All checks passed.")
    advice = data.get("advice") or []
    if advice:
        lines.append("")
        lines.append("What to do:")
        lines += [f"  {a}" for a in advice]
    return "\n".join(lines)


class AuditView(QWidget):
    """The audit log of the unlocked workspace; :meth:`verify` checks the whole workspace."""

    verified = Signal(object)
    """The ``verify`` job's result (a dict), or None when it could not run."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.log: AuditLog | None = None
        self.job: JobProcess | None = None
        self.report: dict[str, Any] | None = None
        self.bad_rows: dict[int, str] = {}
        self._locking = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        filters = QHBoxLayout()
        self.action_filter = QComboBox()
        self.user_filter = QComboBox()
        self.object_filter = QLineEdit()
        self.object_filter.setPlaceholderText("object, e.g. legal@2")
        self.since_filter = QLineEdit()
        self.since_filter.setPlaceholderText("from YYYY-MM-DD")
        self.until_filter = QLineEdit()
        self.until_filter.setPlaceholderText("to YYYY-MM-DD")
        for label, widget in (
            ("Action", self.action_filter),
            ("User", self.user_filter),
            ("Object", self.object_filter),
            ("Time", self.since_filter),
        ):
            filters.addWidget(QLabel(label))
            filters.addWidget(widget, 1)
        filters.addWidget(self.until_filter, 1)
        layout.addLayout(filters)
        self.action_filter.currentIndexChanged.connect(self.refresh)
        self.user_filter.currentIndexChanged.connect(self.refresh)
        for edit in (self.object_filter, self.since_filter, self.until_filter):
            edit.editingFinished.connect(self.refresh)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("auditTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout.addWidget(self.table, 3)

        row = QHBoxLayout()
        self.verify_button = QPushButton("Verify workspace")
        self.verify_button.setToolTip(
            "Check the registry, every model, dataset, adapter and export against its sha256, "
            "and the audit log's hash chain (appliance verify), in a separate process."
        )
        self.verify_button.clicked.connect(self.verify)
        row.addWidget(self.verify_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setTextVisible(False)
        self.progress.hide()
        row.addWidget(self.progress, 1)
        self.status = QLabel()
        self.status.setObjectName("auditStatus")
        self.status.setWordWrap(True)
        row.addWidget(self.status, 2)
        layout.addLayout(row)
        self.report_box = QPlainTextEdit()
        self.report_box.setObjectName("verifyReport")
        self.report_box.setReadOnly(True)
        self.report_box.hide()
        layout.addWidget(self.report_box, 2)
        self.refresh()

    @property
    def usable(self) -> bool:
        return self.workspace is not None and not self.workspace.locked and not self._locking

    def on_lock(self) -> None:
        """Forget the rows and the report (the window locks); a running verify goes on."""
        self._locking = True
        self.log = None
        self.report = None
        self.bad_rows = {}
        self.table.setRowCount(0)
        self.report_box.clear()
        self.report_box.hide()
        self.status.clear()

    def on_unlock(self) -> None:
        self._locking = False
        self.refresh()

    # -- the log ------------------------------------------------------------------------------

    def current_filter(self) -> AuditFilter:
        """The filter the widgets describe.

        Raises:
            UsageError: a date that does not parse.
        """

        def choice(combo: QComboBox) -> str | None:
            text = combo.currentText()
            return None if not text or text == ANY else text

        return AuditFilter(
            action=choice(self.action_filter),
            user=choice(self.user_filter),
            object=self.object_filter.text().strip() or None,
            since=self.since_filter.text(),
            until=self.until_filter.text(),
        )

    @Slot()
    def refresh(self) -> None:
        if self.workspace is None or not self.usable:
            self.status.setText("Unlock the workspace to see its audit log.")
            return
        try:
            flt = self.current_filter()
        except ApplianceError as exc:
            self._say(str(exc), error=True)
            return
        with self.workspace.registry() as reg:
            self.log = audit_log(reg, flt)
        self._fill_choices(self.action_filter, self.log.actions)
        self._fill_choices(self.user_filter, self.log.users)
        entries = self.log.entries
        self.table.setRowCount(len(entries))
        for r, entry in enumerate(entries):
            cells = (
                str(entry.seq),
                entry.time[:19].replace("T", " "),
                entry.user,
                entry.action,
                entry.object,
                json.dumps(entry.details, sort_keys=True),
            )
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self._mark_bad_rows()
        if self.job is None or self.job.outcome is not None:
            shown = len(entries)
            self._say(
                f"{shown} of {self.log.total} rows shown."
                if shown != self.log.total
                else f"{shown} rows."
            )

    def _fill_choices(self, combo: QComboBox, values: tuple[str, ...]) -> None:
        current = combo.currentText() or ANY
        wanted = [ANY, *values]
        if [combo.itemText(i) for i in range(combo.count())] == wanted:
            return
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(wanted)
        combo.setCurrentIndex(max(0, wanted.index(current) if current in wanted else 0))
        combo.blockSignals(False)

    def clear_filters(self) -> None:
        for combo in (self.action_filter, self.user_filter):
            combo.blockSignals(True)
            combo.setCurrentIndex(0)
            combo.blockSignals(False)
        for edit in (self.object_filter, self.since_filter, self.until_filter):
            edit.clear()
        self.refresh()

    def row_of(self, seq: int) -> int | None:
        """The table row showing audit row ``seq`` (None when filtered out)."""
        for r in range(self.table.rowCount()):
            item = self.table.item(r, 0)
            if item is not None and item.text() == str(seq):
                return r
        return None

    def _mark_bad_rows(self) -> None:
        first = min(self.bad_rows) if self.bad_rows else None
        for seq, what in self.bad_rows.items():
            r = self.row_of(seq)
            if r is None:
                continue
            for c in range(self.table.columnCount()):
                item = self.table.item(r, c)
                if item is not None:
                    item.setBackground(QBrush(FIRST_BAD if seq == first else BAD))
                    item.setToolTip(what)

    # -- verify -------------------------------------------------------------------------------

    @Slot()
    def verify(self) -> JobProcess | None:
        """Start the ``verify`` job (nothing when one runs, or the workspace is locked)."""
        if self.workspace is None or not self.usable:
            return None
        if self.job is not None and self.job.outcome is None:
            return None
        request = JobRequest.for_vault(self.workspace.vault, "verify", {}, writes_registry=True)
        job = JobProcess(request, hang_s=VERIFY_HANG_S, parent=self)
        job.succeeded.connect(self._verified)
        job.failed.connect(self._verify_failed)
        if self.job is not None:
            self.job.deleteLater()
        self.job = job
        self.verify_button.setEnabled(False)
        self.progress.show()
        self._say("Verifying the workspace (registry, files, audit chain)…")
        job.start()
        return job

    @Slot(object)
    def _verified(self, data: dict[str, Any]) -> None:
        self._done()
        if not self.usable:
            return  # finished while the window was locked: show nothing
        self.report = data
        self.report_box.setPlainText(report_text(data))
        self.report_box.show()
        self.bad_rows = {int(seq): str(what) for seq, what in data.get("audit_problems", [])}
        first = data.get("first_bad_audit_row")
        if first is not None:
            if self.row_of(int(first)) is None:
                self.clear_filters()  # the first bad row must be in sight
            else:
                self._mark_bad_rows()
            r = self.row_of(int(first))
            item = self.table.item(r, 0) if r is not None else None
            if r is not None and item is not None:
                self.table.selectRow(r)
                self.table.scrollToItem(item)
            self._say(
                f"The audit chain is broken: the first bad row is #{first} "
                f"({self.bad_rows[int(first)]}).",
                error=True,
            )
        elif data.get("ok"):
            self._say("Verify: all checks passed.")
        else:
            self._say("Verify found problems: see the report below.", error=True)
        self.verified.emit(data)

    @Slot(str)
    def _verify_failed(self, message: str) -> None:
        self._done()
        self._say(f"Verify could not run: {message}", error=True)
        self.verified.emit(None)

    def _done(self) -> None:
        self.verify_button.setEnabled(True)
        self.progress.hide()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop a running verify (the window is closing)."""
        if self.job is not None and self.job.outcome is None:
            self.job.end(timeout_s)

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status.setText(text)
        self.status.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
