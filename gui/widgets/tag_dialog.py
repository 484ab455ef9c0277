"""Point a tag at an adapter version, with the move shown before it happens.

The dialog asks the core what the tag command would do (:func:`plan_tag`) for every tag typed
or chosen, and says it in one sentence that names the version that loses the tag. Nothing is
written here: the page applies :attr:`TagDialog.tag_move` once the dialog is accepted.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from appliance.errors import ApplianceError
from appliance.registry.history import STANDARD_TAGS, TagMove


class TagDialog(QDialog):
    """Choose ``production``, ``staging`` or a free-text tag for ``ref``.

    Args:
        ref: the version to tag, ``NAME@N``.
        plan: the core's :func:`plan_tag` bound to a registry: tag -> :class:`TagMove`.
    """

    def __init__(
        self, ref: str, plan: Callable[[str], TagMove], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.ref = ref
        self._plan = plan
        self.tag_move: TagMove | None = None
        self.setWindowTitle(f"Tag {ref}")
        self.setMinimumWidth(480)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.tag_combo = QComboBox()
        self.tag_combo.setEditable(True)
        self.tag_combo.addItems(list(STANDARD_TAGS))
        self.tag_combo.setToolTip("production, staging, or any name starting with a letter")
        form.addRow("Tag:", self.tag_combo)
        layout.addLayout(form)
        self.move_label = QLabel()
        self.move_label.setObjectName("tagMove")
        self.move_label.setWordWrap(True)
        layout.addWidget(self.move_label)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.tag_combo.currentTextChanged.connect(self._update)
        self._update(self.tag_combo.currentText())

    @property
    def ok_button(self) -> QWidget:
        return self.buttons.button(QDialogButtonBox.StandardButton.Ok)

    @Slot(str)
    def _update(self, text: str) -> None:
        tag = text.strip()
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        try:
            self.tag_move = self._plan(tag) if tag else None
        except ApplianceError as exc:
            self.tag_move = None
            self.move_label.setStyleSheet("color: #b00020;")
            self.move_label.setText(str(exc))
            ok.setEnabled(False)
            return
        if self.tag_move is None:
            self.move_label.setText("Type or choose a tag.")
            ok.setEnabled(False)
            return
        self.move_label.setStyleSheet(
            "" if self.tag_move.previous is None else "font-weight: bold;"
        )
        self.move_label.setText(self.tag_move.describe())
        ok.setEnabled(self.tag_move.changes_anything)
        ok.setText("Move tag" if self.tag_move.previous else "Tag")

    def keyPressEvent(self, event: QKeyEvent) -> None:
        # Enter accepts (when the move is valid) and Esc cancels, as in any dialog; kept
        # explicit because the editable combo's line edit would otherwise take Enter.
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if self.ok_button.isEnabled():
                self.accept()
            return
        super().keyPressEvent(event)
