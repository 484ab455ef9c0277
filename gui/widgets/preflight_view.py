"""The pre-flight verdict on the Train page: will this run fit on the chosen device?

Shows a :class:`~appliance.training.preflight.Preflight` in the core's own words (the lines
``appliance train`` prints): the estimated peak against the device's free memory, green when it
fits and red when it does not, the breakdown on hover, and the core's suggested change with a
button that applies it (:attr:`apply_requested`).
"""

from __future__ import annotations

from html import escape

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QLabel, QPushButton, QVBoxLayout, QWidget

from appliance.training.preflight import Preflight

_FRAME = "QFrame#preflight {{ background: {}; border: 1px solid {}; border-radius: 4px; }}"
_STYLES = {
    True: _FRAME.format("#e7f4e8", "#4c9a52"),
    False: _FRAME.format("#fbe9e7", "#c62828"),
    None: _FRAME.format("#f2f2f2", "#b0b0b0"),
}


class PreflightView(QFrame):
    """The estimate, the verdict and the fix; :meth:`show_preflight` with each new verdict."""

    apply_requested = Signal()
    """The person asked to apply the suggested fix (:attr:`Preflight.fix`)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("preflight")
        self.preflight: Preflight | None = None
        self.device = QLabel()
        self.device.setWordWrap(True)
        self.device.setObjectName("preflightDevice")
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setObjectName("preflightSummary")
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fix_button = QPushButton()
        self.fix_button.setObjectName("applyFix")
        self.fix_button.clicked.connect(self.apply_requested)
        self.fix_button.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(4)
        layout.addWidget(self.device)
        layout.addWidget(self.summary)
        layout.addWidget(self.fix_button)
        self.show_waiting("Choose a base model to see whether the run fits.")

    @property
    def fits(self) -> bool | None:
        return self.preflight.fits if self.preflight is not None else None

    def show_waiting(self, text: str) -> None:
        """No verdict (yet): say why."""
        self.preflight = None
        self.setStyleSheet(_STYLES[None])
        self.device.setText("Memory estimate")
        self.summary.setText(text)
        self.setToolTip("")
        self.fix_button.hide()

    def show_preflight(self, preflight: Preflight) -> None:
        self.preflight = preflight
        self.setStyleSheet(_STYLES[preflight.fits])
        self.device.setText(f"<b>Memory estimate</b> · {escape(preflight.device_label)}")
        if preflight.estimate is None:
            self.summary.setText(escape(preflight.note or "No estimate."))
        else:
            self.summary.setText("<br>".join(escape(line.strip()) for line in _verdict(preflight)))
        self.setToolTip(_breakdown(preflight))
        fix = preflight.fix
        if preflight.fits is False and fix is not None:
            self.fix_button.setText(f"Apply: {fix.text}")
            self.fix_button.setToolTip("Changes " + ", ".join(fix.assignments))
            self.fix_button.show()
        else:
            self.fix_button.hide()


def _verdict(preflight: Preflight) -> list[str]:
    """The core's lines that carry the verdict: the total, free memory, the changes to try."""
    keep = ("Estimated peak", "Free ", "Warning:", "Try ", "No change")
    return [line for line in preflight.lines if line.strip().startswith(keep)]


def _breakdown(preflight: Preflight) -> str:
    """The tooltip: the whole estimate with every term, as ``appliance train`` prints it."""
    text = "\n".join(escape(line) for line in preflight.lines)
    return f"<pre>{text}</pre>"
