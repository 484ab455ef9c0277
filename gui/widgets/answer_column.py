"""One column of the Playground: a model's side of the conversation, its answer streaming in.

The questions are the same in every column; each column shows the answers of its own model
(the base model, adapter A or adapter B) and, under them, the figures of the last answer:
tokens, tokens/s, and why it ended.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QTextBlockFormat, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QFrame, QLabel, QTextEdit, QVBoxLayout, QWidget

from gui.style import ERROR_COLOUR

_FINISH = {"eos": "ended its turn", "length": "hit the token limit", "stopped": "stopped"}


def describe_answer(answer: dict[str, Any]) -> str:
    """``42 tokens · 17.3 tokens/s · ended its turn`` for an ``answer`` event."""
    tokens = int(answer.get("tokens") or 0)
    speed = float(answer.get("tokens_per_s") or 0.0)
    finish = _FINISH.get(str(answer.get("finish")), str(answer.get("finish", "")))
    return f"{tokens} token{'s' if tokens != 1 else ''} · {speed:.1f} tokens/s · {finish}"


class AnswerColumn(QFrame):
    """The conversation as one model answers it."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.setObjectName(f"column{title.split()[0]}")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        self.heading = QLabel(title)
        font = self.heading.font()
        font.setBold(True)
        self.heading.setFont(font)
        self.heading.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(self.heading)
        self.view = QTextEdit()
        self.view.setReadOnly(True)
        self.view.setObjectName("answers")
        layout.addWidget(self.view, 1)
        self.figures = QLabel()
        self.figures.setObjectName("answerFigures")
        self.figures.setStyleSheet("color: #555;")
        layout.addWidget(self.figures)
        self.model: str | None = None
        self.pieces: list[str] = []
        """The pieces of the answer being (or last) streamed, in order."""
        self.answering = False
        self.set_model(None)

    def set_model(self, label: str | None, *, empty: str = "no adapter chosen") -> None:
        """Show which model answers here (None: nobody; the column is greyed)."""
        self.model = label
        self.heading.setText(f"{self.title} · {label if label else empty}")
        self.setEnabled(label is not None)

    # -- the conversation -------------------------------------------------------------------

    def _cursor(self) -> QTextCursor:
        cursor = self.view.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        return cursor

    def _block(self, background: str | None = None) -> QTextCursor:
        cursor = self._cursor()
        block = QTextBlockFormat()
        block.setTopMargin(6)
        if background:
            block.setBackground(QColor(background))
        if self.view.document().isEmpty():
            cursor.setBlockFormat(block)
        else:
            cursor.insertBlock(block)
        return cursor

    def add_question(self, text: str) -> None:
        cursor = self._block("#e8eef8")
        bold = QTextCharFormat()
        bold.setFontWeight(QFont.Weight.Bold)
        cursor.insertText("You: ", bold)
        cursor.insertText(text, QTextCharFormat())
        self._scroll()

    def begin_answer(self) -> None:
        self.pieces = []
        self.answering = True
        self.figures.setText("answering…")
        cursor = self._block()
        cursor.setCharFormat(QTextCharFormat())

    def append(self, piece: str) -> None:
        """The next piece of the answer being streamed."""
        self.pieces.append(piece)
        self._cursor().insertText(piece, QTextCharFormat())
        self._scroll()

    def finish(self, answer: dict[str, Any]) -> None:
        self.answering = False
        self.figures.setText(describe_answer(answer))

    def refuse(self, message: str) -> None:
        """The question could not be answered here: the reason in place of an answer."""
        self.answering = False
        cursor = self._block()
        red = QTextCharFormat()
        red.setForeground(QColor(ERROR_COLOUR))
        red.setFontItalic(True)
        cursor.insertText(message, red)
        self.figures.setText("")
        self._scroll()

    def note(self, text: str) -> None:
        """A grey line in the conversation (a question that was not asked here)."""
        cursor = self._block()
        grey = QTextCharFormat()
        grey.setForeground(QColor("#777"))
        grey.setFontItalic(True)
        cursor.insertText(text, grey)

    def clear(self) -> None:
        self.view.clear()
        self.figures.setText("")
        self.pieces = []
        self.answering = False

    @property
    def answer_text(self) -> str:
        return "".join(self.pieces)

    def transcript(self) -> str:
        return self.view.toPlainText()

    def _scroll(self) -> None:
        bar = self.view.verticalScrollBar()
        bar.setValue(bar.maximum())
