"""Asking for a new passphrase (twice, with the strength hint), then doing something with it.

Used to change one's passphrase and to add a key slot (Settings), and on first run to add the
second slot. The rules and messages are the core's: :func:`check_label` for a slot's name and
:func:`check_new_passphrase` for the passphrase. The work itself (an Argon2id derivation, about
half a second by design) runs on a background task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from appliance.errors import UsageError
from appliance.progress import Progress
from appliance.vault.keyslots import check_label, check_new_passphrase
from gui.style import ERROR_STYLE
from gui.tasks import Task
from gui.widgets.strength_meter import StrengthMeter

Action = Callable[[str, str], Any]
"""``action(label, passphrase)``: runs on a background task; raises an ApplianceError to refuse."""


def sentence(message: str) -> str:
    """A core message as a sentence for a dialog: capitalised, with a full stop."""
    text = message.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


class NewPassphraseDialog(QDialog):
    """Label (optional), passphrase, again, strength hint; OK runs ``action`` in the background."""

    def __init__(
        self,
        title: str,
        intro: str,
        action: Action,
        *,
        ask_label: bool = False,
        ok_text: str = "OK",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(520)
        self.action = action
        self.task: Task | None = None
        self.result_value: Any = None
        layout = QVBoxLayout(self)
        text = QLabel(intro)
        text.setWordWrap(True)
        text.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(text)
        form = QFormLayout()
        self.label = QLineEdit()
        self.label.setObjectName("slotLabel")
        self.label.setPlaceholderText("e.g. bob, or safe")
        if ask_label:
            form.addRow("Name of the key slot:", self.label)
        self.passphrase = QLineEdit()
        self.passphrase.setObjectName("newPassphrase")
        self.passphrase.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("New passphrase:", self.passphrase)
        self.confirm = QLineEdit()
        self.confirm.setObjectName("confirmPassphrase")
        self.confirm.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("Again:", self.confirm)
        self.meter = StrengthMeter()
        self.passphrase.textChanged.connect(self.meter.show_for)
        form.addRow("", self.meter)
        layout.addLayout(form)
        self.ask_label = ask_label
        self.error = QLabel()
        self.error.setObjectName("error")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.hide()
        layout.addWidget(self.error)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setTextVisible(False)
        self.busy.hide()
        layout.addWidget(self.busy)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok_text)
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.finished.connect(self._forget)

    def show_error(self, message: str) -> None:
        self.error.setText(sentence(message))
        self.error.show()

    @Slot()
    def submit(self) -> None:
        """Check the fields with the core's rules, then run the action in the background."""
        if self.task is not None and self.task.running:
            return
        label = self.label.text().strip()
        passphrase = self.passphrase.text()
        try:
            if self.ask_label:
                check_label(label)
            check_new_passphrase(passphrase)
        except UsageError as exc:
            self.show_error(str(exc))
            return
        if passphrase != self.confirm.text():
            self.show_error("The two passphrases differ.")
            return
        action = self.action

        def work(_progress: Progress) -> Any:
            return action(label, passphrase)

        self.task = Task("new passphrase", work, self)
        self.task.succeeded.connect(self._done)
        self.task.failed.connect(self._failed)
        self._set_busy(True)
        self.task.start()

    def _set_busy(self, busy: bool) -> None:
        self.busy.setVisible(busy)
        if busy:
            self.error.hide()
        self.buttons.setEnabled(not busy)
        for field in (self.label, self.passphrase, self.confirm):
            field.setEnabled(not busy)

    @Slot(object)
    def _done(self, value: Any) -> None:
        self.result_value = value
        self._set_busy(False)
        self.accept()

    @Slot(str)
    def _failed(self, message: str) -> None:
        self._set_busy(False)
        self.show_error(message)

    @Slot()
    def _forget(self) -> None:
        self.passphrase.clear()
        self.confirm.clear()
