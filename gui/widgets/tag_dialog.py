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
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from appliance.errors import ApplianceError
from appliance.registry.history import STANDARD_TAGS, TagMove

GateNote = tuple[str, bool]
"""What the promotion gate says about a tag: the sentence, and whether it refuses (then only
an override reason, recorded in the audit log, lets the tag move)."""


class TagDialog(QDialog):
    """Choose ``production``, ``staging`` or a free-text tag for ``ref``.

    Args:
        ref: the version to tag, ``NAME@N``.
        plan: the core's :func:`plan_tag` bound to a registry: tag -> :class:`TagMove`.
        gate: the golden-set gate's note for a tag (None: the tag is not gated).
    """

    def __init__(
        self,
        ref: str,
        plan: Callable[[str], TagMove],
        gate: Callable[[str], GateNote | None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.ref = ref
        self._plan = plan
        self._gate = gate
        self._refused = False
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
        self.gate_label = QLabel()
        self.gate_label.setObjectName("tagGate")
        self.gate_label.setWordWrap(True)
        layout.addWidget(self.gate_label)
        self.override_edit = QLineEdit()
        self.override_edit.setPlaceholderText(
            "reason to tag anyway (recorded in the audit log with your user name)"
        )
        self.override_edit.textChanged.connect(self._override_changed)
        layout.addWidget(self.override_edit)
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

    @property
    def override(self) -> str | None:
        """The override reason typed for a gate that refuses (None when not needed)."""
        text = self.override_edit.text().strip()
        return text if self._refused and text else None

    @Slot(str)
    def _override_changed(self, _text: str) -> None:
        if self._refused and self.tag_move is not None:
            self.ok_button.setEnabled(self.tag_move.changes_anything and bool(self.override))

    @Slot(str)
    def _update(self, text: str) -> None:
        tag = text.strip()
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self._refused = False
        self.gate_label.hide()
        self.override_edit.hide()
        try:
            self.tag_move = self._plan(tag) if tag else None
            note = self._gate(tag) if self._gate is not None and self.tag_move else None
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
        if note is not None:
            words, refused = note
            self._refused = refused
            self.gate_label.setStyleSheet("color: #b00020;" if refused else "")
            self.gate_label.setText(words)
            self.gate_label.show()
            self.override_edit.setVisible(refused)
            if refused:
                ok.setEnabled(self.tag_move.changes_anything and bool(self.override))

    def keyPressEvent(self, event: QKeyEvent) -> None:
        # Enter accepts (when the move is valid) and Esc cancels, as in any dialog; kept
        # explicit because the editable combo's line edit would otherwise take Enter.
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if self.ok_button.isEnabled():
                self.accept()
            return
        super().keyPressEvent(event)
