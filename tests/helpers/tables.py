"""Reading a QTableWidget's cells in tests."""

from __future__ import annotations

from PySide6.QtWidgets import QTableWidget, QTableWidgetItem


def table_item(table: QTableWidget, row: int, column: int) -> QTableWidgetItem:
    """The item at ``row``, ``column``: a test failure, not a None, when the cell is empty.

    ``QTableWidget.item`` returns None for a cell nothing was put in; a page that fills its
    tables puts an item in every cell, so a missing one is the page's bug, said here.
    """
    item = table.item(row, column)
    assert item is not None, f"no item at row {row}, column {column} of {table.objectName()!r}"
    return item
