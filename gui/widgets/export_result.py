"""What an export produced: the verification figures, the files, and how to serve them.

Shown after the ``export`` job ends. A verified export lists its figures (max |Δlogit| against
the tolerance, greedy agreement, GGUF's own checks), its files with sizes and the sha256 its
``MANIFEST`` records, a button that opens the folder, and the serving commands for what was
written (copied to the clipboard). A failed verification shows the same figures, in red, and
says that nothing was left in the destination.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QUrl, Slot
from PySide6.QtGui import QBrush, QColor, QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance.export.serving import ExportedFile, ServingCommand
from appliance.units import format_bytes
from gui.style import ERROR_COLOUR

OK_COLOR = "#1b7f3b"


def figure_rows(figures: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """``(what, value, within bounds)`` for each verification figure present."""
    rows: list[tuple[str, str, bool | None]] = []
    if "max_abs_diff" in figures:
        within = figures["max_abs_diff"] is not None and (
            figures["max_abs_diff"] <= figures["tolerance"]
        )
        rows.append(
            (
                "max |Δlogit|",
                f"{_g(figures['max_abs_diff'])} (tolerance {_g(figures['tolerance'])})",
                bool(within),
            )
        )
        rows.append(
            (
                "relative to the logits' scale",
                f"{_g(100 * (figures.get('relative_diff') or 0.0))}% of "
                f"{_g(figures.get('logits_scale'))}",
                None,
            )
        )
    if "greedy_tokens" in figures:
        matching, total = figures["greedy_tokens_matching"], figures["greedy_tokens"]
        required = bool(figures.get("greedy_required"))
        rows.append(
            (
                "greedy tokens agreeing",
                f"{matching}/{total}" + (" (all required)" if required else " (not required)"),
                matching == total if required else None,
            )
        )
    if "weight_error" in figures:
        rows.append(("max weight quantisation error", _g(figures["weight_error"]), None))
    check = figures.get("file_check")
    if isinstance(check, dict):
        rows.append(
            (
                "GGUF file vs its weights in memory",
                f"max |Δlogit| {_g(check['max_abs_diff'])} (tolerance {_g(check['tolerance'])}), "
                f"greedy {check['greedy_tokens_matching']}/{check['greedy_tokens']}",
                bool(check.get("passed")),
            )
        )
    if "tokenizer_match" in figures:
        same = bool(figures["tokenizer_match"])
        rows.append(("tokenizer read back", "identical" if same else "DIFFERS", same))
    return rows


def describe_format(record: dict[str, Any]) -> str:
    """E.g. "GGUF Q8_0", "merged bf16", "PEFT adapter"."""
    details = record.get("details") or {}
    if record["format"] == "gguf":
        return f"GGUF {str(details.get('gguf_type', '')).upper()}".strip()
    if record["format"] == "adapter":
        return "PEFT adapter"
    return f"merged {details.get('dtype', '')}".strip()


def _g(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3g}"


class ExportResultView(QGroupBox):
    """The outcome of one export."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Result", parent)
        self.record: dict[str, Any] | None = None
        self.commands: list[ServingCommand] = []
        layout = QVBoxLayout(self)
        self.headline = QLabel()
        self.headline.setObjectName("exportHeadline")
        self.headline.setWordWrap(True)
        layout.addWidget(self.headline)
        self.figures = QTableWidget(0, 2)
        self.figures.setObjectName("exportFigures")
        self.files = QTableWidget(0, 3)
        self.files.setObjectName("exportFiles")
        self.files.setHorizontalHeaderLabels(("File", "Size", "sha256 (MANIFEST)"))
        for table in (self.figures, self.files):
            table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
            table.verticalHeader().hide()
            table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            table.horizontalHeader().setStretchLastSection(True)
        self.figures.horizontalHeader().hide()
        tables = QHBoxLayout()
        tables.addWidget(self.figures, 2)
        tables.addWidget(self.files, 3)
        layout.addLayout(tables, 1)
        actions = QHBoxLayout()
        self.open_button = QPushButton("Open folder")
        self.open_button.clicked.connect(self.open_folder)
        actions.addWidget(self.open_button)
        actions.addWidget(QLabel("Serve with:"))
        self.command_combo = QComboBox()
        self.command_combo.currentIndexChanged.connect(self._show_command)
        actions.addWidget(self.command_combo, 1)
        self.copy_button = QPushButton("Copy command")
        self.copy_button.clicked.connect(self.copy_command)
        actions.addWidget(self.copy_button)
        layout.addLayout(actions)
        self.command_text = QLabel()
        self.command_text.setObjectName("servingCommand")
        self.command_text.setWordWrap(True)
        self.command_text.setStyleSheet("font-family: monospace;")
        layout.addWidget(self.command_text)
        self.clear()

    def clear(self) -> None:
        self.record = None
        self.commands = []
        self.headline.setText("")
        self.figures.setRowCount(0)
        self.files.setRowCount(0)
        self.command_combo.clear()
        self.command_text.setText("")
        self.hide()

    def show_success(
        self,
        record: dict[str, Any],
        files: list[ExportedFile],
        commands: list[ServingCommand],
        warnings: list[str] | None = None,
    ) -> None:
        """A verified export: its figures, files and serving commands."""
        self.record = record
        self.commands = commands
        size = format_bytes(int(record.get("bytes") or 0))
        words = [
            f"<b style='color:{OK_COLOR}'>✔ Verified</b>: {record['adapter']} exported as "
            f"{describe_format(record)} to <code>{record['path']}</code> "
            f"({len(record['files'])} files, {size}); digest of the files "
            f"<code>{str(record.get('sha256', ''))[:16]}…</code>"
        ]
        words += [f"<br><span style='color:#8a5a00'>warning: {w}</span>" for w in warnings or []]
        self.headline.setText("".join(words))
        self._fill_figures(record.get("verification") or {})
        self.files.setRowCount(len(files))
        for r, f in enumerate(files):
            for c, text in enumerate((f.path, format_bytes(f.bytes), f.sha256)):
                self.files.setItem(r, c, QTableWidgetItem(text))
        self.files.show()
        self.command_combo.clear()
        for command in commands:
            self.command_combo.addItem(command.label)
        for widget in (self.open_button, self.command_combo, self.copy_button):
            widget.setEnabled(True)
        self.show()

    def show_failure(self, message: str, figures: dict[str, Any] | None) -> None:
        """A failed export: the message, and the figures when verification failed."""
        self.record = None
        self.commands = []
        self.headline.setText(
            f"<b style='color:{ERROR_COLOUR}'>✘ Export failed</b>: {message}"
            + ("<br>Nothing was left in the destination." if figures else "")
        )
        self._fill_figures(figures or {})
        self.figures.setVisible(bool(figures))
        self.files.setRowCount(0)
        self.files.hide()
        self.command_combo.clear()
        self.command_text.setText("")
        for widget in (self.open_button, self.command_combo, self.copy_button):
            widget.setEnabled(False)
        self.show()

    def _fill_figures(self, figures: dict[str, Any]) -> None:
        rows = figure_rows(figures)
        self.figures.setRowCount(len(rows))
        for r, (what, value, ok) in enumerate(rows):
            self.figures.setItem(r, 0, QTableWidgetItem(what))
            mark = "" if ok is None else (" ✔" if ok else " ✘")
            item = QTableWidgetItem(value + mark)
            if ok is False:
                item.setForeground(QBrush(QColor(ERROR_COLOUR)))
            self.figures.setItem(r, 1, item)
        self.figures.show()

    @Slot(int)
    def _show_command(self, index: int) -> None:
        if 0 <= index < len(self.commands):
            self.command_text.setText(self.commands[index].command)
        else:
            self.command_text.setText("")

    @Slot()
    def copy_command(self) -> str:
        """Put the chosen serving command on the clipboard; returns it."""
        index = self.command_combo.currentIndex()
        if not 0 <= index < len(self.commands):
            return ""
        text = self.commands[index].command
        QGuiApplication.clipboard().setText(text)
        return text

    @Slot()
    def open_folder(self) -> None:
        if self.record is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(self.record["path"]))))
