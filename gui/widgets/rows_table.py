"""A table of dataset rows, decrypted in memory only: long cells elided, the full text on demand.

Used by the import wizard (the first rows a file would store) and by the Datasets page (the
first rows of a stored version). Chat rows show their first system, user and assistant turns
and the number of turns; text rows their text. Double-clicking a row (or Enter) opens the whole
example, every turn, in a read-only window. :meth:`RowsModel.clear` forgets every row, as
locking the window requires.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QPlainTextEdit,
    QTableView,
    QVBoxLayout,
    QWidget,
)

ELIDE_CHARS = 160
"""Characters of a cell shown in the table; the rest is behind a double-click."""

Row = dict[str, Any]
Index = QModelIndex | QPersistentModelIndex


def _first(messages: list[dict[str, Any]], role: str) -> str:
    return next((str(m.get("content", "")) for m in messages if m.get("role") == role), "")


def elide(text: str, limit: int = ELIDE_CHARS) -> str:
    """One line of at most ``limit`` characters: newlines shown as ⏎, the rest cut with …"""
    flat = " ⏎ ".join(part.strip() for part in text.splitlines()) if "\n" in text else text
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def full_text(row: Row) -> str:
    """The whole example as a person reads it: each turn under its role."""
    if "messages" in row:
        return "\n\n".join(
            f"[{m.get('role', '?')}]\n{m.get('content', '')}" for m in row["messages"]
        )
    return str(row.get("text", ""))


class RowsModel(QAbstractTableModel):
    """Rows with a label each (file line, or position in the version) and, optionally, a split."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: list[tuple[str, Row]] = []
        self._chat = True
        self._system = False
        self._label_title = "Line"

    def set_rows(self, rows: list[tuple[str, Row]], label_title: str = "Line") -> None:
        """Show ``rows`` as ``(label, canonical row)``; a row's ``split`` is shown when present."""
        self.beginResetModel()
        self._rows = list(rows)
        self._chat = not rows or "messages" in rows[0][1]
        self._system = any(
            m.get("role") == "system" for _, r in rows for m in r.get("messages") or []
        )
        self._label_title = label_title
        self.endResetModel()

    def clear(self) -> None:
        """Forget every row (the plaintext goes with the last reference to it)."""
        self.set_rows([], self._label_title)

    def row_data(self, row: int) -> Row:
        return self._rows[row][1]

    def _has_split(self) -> bool:
        return any("split" in r for _, r in self._rows[:1])

    def headers(self) -> list[str]:
        cols = [self._label_title]
        if self._has_split():
            cols.append("Split")
        if self._chat:
            cols += (
                ["Turns", "System", "User", "Assistant"]
                if self._system
                else [
                    "Turns",
                    "User",
                    "Assistant",
                ]
            )
        else:
            cols.append("Text")
        return cols

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.headers())

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            headers = self.headers()
            return headers[section] if 0 <= section < len(headers) else None
        return None

    def cell(self, row: int, column: int) -> str:
        """The full (not elided) text of one cell."""
        label, data = self._rows[row]
        header = self.headers()[column]
        if header == self._label_title:
            return label
        if header == "Split":
            return str(data.get("split", ""))
        if header == "Text":
            return str(data.get("text", ""))
        messages = data.get("messages") or []
        if header == "Turns":
            return str(len(messages))
        return _first(messages, header.lower())

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return elide(self.cell(index.row(), index.column()))
        if role == Qt.ItemDataRole.ToolTipRole:
            text = self.cell(index.row(), index.column())
            if len(text) > ELIDE_CHARS or "\n" in text:
                return "Double-click to read the whole example"
        return None


class FullTextDialog(QDialog):
    """One example, whole, read-only."""

    def __init__(self, title: str, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.resize(720, 520)
        layout = QVBoxLayout(self)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setPlainText(text)
        layout.addWidget(self.text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.finished.connect(self._forget)

    @Slot()
    def _forget(self) -> None:
        self.text.clear()
        self.deleteLater()


class RowsView(QTableView):
    """A :class:`RowsModel` in a table; double-click or Enter opens the whole example."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows = RowsModel(self)
        self.setModel(self.rows)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setWordWrap(False)
        self.setAlternatingRowColors(True)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.rows.modelReset.connect(self._fit)
        self.doubleClicked.connect(self._open)
        self.activated.connect(self._open)
        self.dialog: FullTextDialog | None = None

    @Slot()
    def _fit(self) -> None:
        header = self.horizontalHeader()
        for column, name in enumerate(self.rows.headers()):
            if name in ("Line", "Row", "#", "Split", "Turns"):
                header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
            else:
                header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
                header.resizeSection(column, 260)

    def open_row(self, row: int) -> FullTextDialog:
        """Show example ``row`` whole (what a double-click does)."""
        label = self.rows.cell(row, 0)
        dialog = FullTextDialog(
            f"Example {label}", full_text(self.rows.row_data(row)), self.window()
        )
        self.close_dialog()
        self.dialog = dialog
        dialog.show()
        return dialog

    def close_dialog(self) -> None:
        """Close the full-text window, if one is open (locking does)."""
        if self.dialog is not None:
            dialog, self.dialog = self.dialog, None
            try:
                dialog.text.clear()
                dialog.reject()
            except RuntimeError:
                pass  # closed and deleted already

    def clear(self) -> None:
        """Forget the rows and close the full-text window."""
        self.close_dialog()
        self.rows.clear()

    @Slot(QModelIndex)
    def _open(self, index: QModelIndex) -> None:
        if index.isValid():
            self.open_row(index.row())
