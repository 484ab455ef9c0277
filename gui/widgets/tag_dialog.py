"""Point a tag at an adapter version, with the move shown before it happens.

The dialog asks the core what the tag command would do (:func:`plan_tag`) for every tag typed
or chosen, and says it in one sentence that names the version that loses the tag. Nothing is
written here: the page applies :attr:`TagDialog.tag_move` once the dialog is accepted.

A ``production`` tag that the golden-set gate guards is not decided here: the dialog says so and
OK hands the version to the Registry page's "Promote to production"
(:class:`~gui.widgets.promotion.PromotePanel`), which scores missing figures first, shows both
figures when it refuses and takes an audited override reason. One gate, one place in the app.
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
from gui.style import ERROR_STYLE


class TagDialog(QDialog):
    """Choose ``production``, ``staging`` or a free-text tag for ``ref``.

    Args:
        ref: the version to tag, ``NAME@N``.
        plan: the core's :func:`plan_tag` bound to a registry: tag -> :class:`TagMove`.
        gated: for a tag the golden-set gate guards for this version, the golden set's name
            (``D@V``); None when the tag moves without the gate.
    """

    def __init__(
        self,
        ref: str,
        plan: Callable[[str], TagMove],
        gated: Callable[[str], str | None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.ref = ref
        self._plan = plan
        self._gated = gated
        self.tag_move: TagMove | None = None
        self.golden: str | None = None
        """The golden set guarding the chosen tag: accepting hands it to the gate."""
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
    def gated(self) -> bool:
        """Accepting hands the version to the promotion gate rather than tagging it here."""
        return self.golden is not None

    @Slot(str)
    def _update(self, text: str) -> None:
        tag = text.strip()
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.golden = None
        self.gate_label.hide()
        try:
            self.tag_move = self._plan(tag) if tag else None
            golden = self._gated(tag) if self._gated is not None and self.tag_move else None
        except ApplianceError as exc:
            self.tag_move = None
            self.move_label.setStyleSheet(ERROR_STYLE)
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
        if golden is not None and self.tag_move.changes_anything:
            self.golden = golden
            self.gate_label.setText(
                f"{tag} is guarded by the golden set {golden}: {self.ref} must do no worse on it "
                "than the version in production. Check the gate runs it under the lineage "
                "(missing figures are scored first; if it refuses you see both figures and may "
                "promote anyway with a reason, which is audited)."
            )
            self.gate_label.show()
            ok.setText("Check the gate")

    def keyPressEvent(self, event: QKeyEvent) -> None:
        # Enter accepts (when the move is valid) and Esc cancels, as in any dialog; kept
        # explicit because the editable combo's line edit would otherwise take Enter.
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if self.ok_button.isEnabled():
                self.accept()
            return
        super().keyPressEvent(event)
