"""A passphrase strength hint that follows the typing: a five-step bar and one sentence.

The estimate is the core's (:func:`appliance.vault.strength.estimate`, offline, a few
milliseconds); it is advice only. The hard rule a new passphrase must meet is the core's
:func:`~appliance.vault.keyslots.check_new_passphrase`, checked when the form is submitted.
"""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from appliance.vault.strength import Strength, estimate

COLOURS = ("#b00020", "#d35400", "#b7950b", "#1e8449", "#145a32")
"""Bar colour per score 0-4."""


class StrengthMeter(QWidget):
    """Call :meth:`show_for` with the passphrase as it is typed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.bar = QProgressBar()
        self.bar.setObjectName("strengthBar")
        self.bar.setRange(0, 4)
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(8)
        layout.addWidget(self.bar)
        self.sentence = QLabel()
        self.sentence.setObjectName("strengthSentence")
        self.sentence.setWordWrap(True)
        layout.addWidget(self.sentence)
        self.strength: Strength | None = None
        self.show_for("")

    @Slot(str)
    def show_for(self, passphrase: str) -> Strength:
        strength = estimate(passphrase)
        self.strength = strength
        self.bar.setValue(strength.score if passphrase else 0)
        colour = COLOURS[strength.score]
        self.bar.setStyleSheet(f"QProgressBar::chunk {{ background: {colour}; }}")
        self.sentence.setText(strength.sentence if passphrase else "")
        return strength
