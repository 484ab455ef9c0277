"""A bounded, read-only console for a child's log (the full log stays in the run folder)."""

from __future__ import annotations

from PySide6.QtGui import QFontDatabase, QTextCursor
from PySide6.QtWidgets import QPlainTextEdit, QWidget

MAX_LINES = 2000
"""Lines kept on screen; older ones scroll away (``train.log`` keeps them all)."""
MAX_LINE_CHARS = 2000
"""A longer line is cut here: a console is for reading, the log file has the rest."""


class LogConsole(QPlainTextEdit):
    """Shows log text as it arrives, keeping the last :data:`MAX_LINES` lines."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("logConsole")
        self.setReadOnly(True)
        self.setMaximumBlockCount(MAX_LINES)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setPlaceholderText("The training process's log appears here.")
        self._partial = ""

    def feed(self, data: bytes) -> None:
        """Append raw bytes of a log; a line is shown once its end has arrived."""
        text = self._partial + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE_CHARS:
            lines.append(self._partial)
            self._partial = ""
        self.append_lines(lines)

    def append_lines(self, lines: list[str]) -> None:
        """Append whole lines (a progress bar's ``\\r`` redraws keep their last state)."""
        if not lines:
            return
        shown = [line.rsplit("\r", 1)[-1][:MAX_LINE_CHARS] for line in lines]
        bar = self.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        # One insertion for the whole batch: one layout pass however many lines arrived.
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        prefix = "\n" if not self.document().isEmpty() else ""
        cursor.insertText(prefix + "\n".join(shown))
        if at_end:
            bar.setValue(bar.maximum())

    def reset(self, lines: list[str] | None = None) -> None:
        """Clear, then show ``lines``."""
        self.clear()
        self._partial = ""
        self.append_lines(lines or [])

    def lines(self) -> list[str]:
        """The lines shown (for tests)."""
        text = self.toPlainText()
        return text.split("\n") if text else []
