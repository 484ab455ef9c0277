"""Save a Playground conversation as a test row of a dataset: the start of a golden set.

The user picks whose answers the row keeps (the base model's, adapter A's or B's), may correct
the last answer into the one the team expects, and names a dataset: an existing one gets a new
version with this row added, a new name starts a dataset. Storing happens on the page's task.
"""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

Conversation = list[dict[str, str]]


class SaveConversationDialog(QDialog):
    """Asks for the dataset, the column and the expected answer.

    Args:
        conversations: each answering column's label -> its conversation (ending with an
            answer), in column order.
        datasets: the names of the workspace's datasets of conversations.
    """

    def __init__(
        self,
        conversations: dict[str, Conversation],
        datasets: list[str],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Save as a test row")
        self.setMinimumWidth(520)
        self.conversations = conversations
        self.datasets = datasets
        layout = QVBoxLayout(self)
        intro = QLabel(
            "The conversation becomes one row of a dataset (kept encrypted): its questions and "
            "the answers of the model you pick, the last one as the answer expected. A set of "
            "such rows can become an adapter's golden set."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.column_box = QComboBox()
        self.column_box.setObjectName("answersFrom")
        self.column_box.addItems(list(conversations))
        form.addRow("Answers of:", self.column_box)
        self.dataset_box = QComboBox()
        self.dataset_box.setObjectName("saveDataset")
        self.dataset_box.setEditable(True)
        self.dataset_box.addItems(datasets)
        self.dataset_box.setCurrentText(datasets[0] if datasets else "golden")
        form.addRow("Dataset:", self.dataset_box)
        self.expected = QPlainTextEdit()
        self.expected.setObjectName("expectedAnswer")
        self.expected.setFixedHeight(self.fontMetrics().lineSpacing() * 5 + 12)
        form.addRow("Expected answer:", self.expected)
        layout.addLayout(form)
        self.where = QLabel()
        self.where.setObjectName("saveWhere")
        self.where.setWordWrap(True)
        layout.addWidget(self.where)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.column_box.currentTextChanged.connect(self._column_changed)
        self.dataset_box.currentTextChanged.connect(self._dataset_changed)
        self.expected.textChanged.connect(self._check)
        self._column_changed(self.column_box.currentText())
        self._dataset_changed(self.dataset_box.currentText())

    @property
    def column(self) -> str:
        return self.column_box.currentText()

    @property
    def dataset(self) -> str:
        return self.dataset_box.currentText().strip()

    def conversation(self) -> Conversation:
        """The chosen column's conversation with the expected answer as its last reply."""
        turns = [dict(t) for t in self.conversations.get(self.column, [])]
        if turns and turns[-1]["role"] == "assistant":
            turns[-1]["content"] = self.expected.toPlainText().strip()
        return turns

    @Slot(str)
    def _column_changed(self, column: str) -> None:
        turns = self.conversations.get(column, [])
        last = turns[-1]["content"] if turns and turns[-1]["role"] == "assistant" else ""
        self.expected.setPlainText(last)

    @Slot(str)
    def _dataset_changed(self, name: str) -> None:
        name = name.strip()
        if not name:
            self.where.setText("Name a dataset.")
        elif name in self.datasets:
            self.where.setText(f"A new version of {name}: its rows and this one.")
        else:
            self.where.setText(f"A new dataset {name} with this row.")
        self._check()

    @Slot()
    def _check(self) -> None:
        ok = bool(self.dataset) and bool(self.expected.toPlainText().strip())
        save = self.buttons.button(QDialogButtonBox.StandardButton.Save)
        save.setEnabled(ok)
