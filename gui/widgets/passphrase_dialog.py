"""Create or unlock the workspace's vault: the first thing the desktop app asks for.

The key derivation (Argon2id, about half a second by design) runs on a background task, so the
window stays responsive and shows that it is working.
"""

from __future__ import annotations

import getpass

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
from appliance.unlocked import create_vault
from appliance.vault import Vault
from appliance.vault.keyslots import check_label, check_new_passphrase
from appliance.workspace import Workspace
from gui.style import ERROR_STYLE
from gui.tasks import Task
from gui.widgets.new_passphrase import sentence
from gui.widgets.strength_meter import StrengthMeter


class PassphraseDialog(QDialog):
    """``create=True``: choose the first passphrase of a new workspace; else unlock it.

    After ``exec()`` returns Accepted, :attr:`vault` holds the unlocked vault.
    """

    def __init__(self, ws: Workspace, *, create: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ws = ws
        self.creating = create
        self.vault: Vault | None = None
        self.task: Task | None = None
        self.setWindowTitle("Create the workspace passphrase" if create else "Unlock the workspace")
        self.setMinimumWidth(520)

        layout = QVBoxLayout(self)
        intro = QLabel(
            (
                "Everything in this workspace is encrypted with a key protected by your "
                "passphrase. <b>If the passphrase is lost, the data is lost</b>: nobody, not "
                "even an administrator, can recover it. Keep it safe; you can add a second "
                "key slot (a colleague's passphrase, or one kept in a safe) next."
                if create
                else "Enter the passphrase of this workspace."
            )
            + f"<br><small>{ws.home}</small>"
        )
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(intro)
        self.intro = intro

        form = QFormLayout()
        self.passphrase = QLineEdit()
        self.passphrase.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase.setObjectName("passphrase")
        form.addRow("Passphrase:", self.passphrase)
        self.confirm = QLineEdit()
        self.confirm.setEchoMode(QLineEdit.EchoMode.Password)
        self.confirm.setObjectName("confirm")
        self.meter = StrengthMeter()
        if create:
            form.addRow("Again:", self.confirm)
            self.passphrase.textChanged.connect(self.meter.show_for)
            form.addRow("", self.meter)
        else:
            self.meter.hide()
        layout.addLayout(form)

        self.error = QLabel()
        self.error.setObjectName("error")
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.setWordWrap(True)
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
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Create" if create else "Unlock")
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def show_error(self, message: str) -> None:
        self.error.setText(message)
        self.error.show()

    @Slot()
    def submit(self) -> None:
        """Check the fields, then derive the key in the background."""
        if self.task is not None and self.task.running:
            return
        passphrase = self.passphrase.text()
        if not passphrase:
            self.show_error("Enter a passphrase.")
            return
        if self.creating:
            try:
                check_new_passphrase(passphrase)  # the core's rule and message, as the CLI's
            except UsageError as exc:
                self.show_error(sentence(str(exc)))
                return
            if passphrase != self.confirm.text():
                self.show_error("The two passphrases differ.")
                return
        ws, create = self.ws, self.creating

        def work(_progress: Progress) -> Vault:
            if create:
                # With its first keyed audit row, exactly as 'appliance init' makes it.
                return create_vault(ws, passphrase, _default_label())
            return Vault.unlock(ws, passphrase)

        self.task = Task("unlock", work, self)
        self.task.succeeded.connect(self._unlocked)
        self.task.failed.connect(self._failed)
        self._set_busy(True)
        self.task.start()

    def _set_busy(self, busy: bool) -> None:
        self.busy.setVisible(busy)
        self.error.hide()
        self.buttons.setEnabled(not busy)
        self.passphrase.setEnabled(not busy)
        self.confirm.setEnabled(not busy)

    @Slot(object)
    def _unlocked(self, vault: Vault) -> None:
        self.vault = vault
        self._set_busy(False)
        self.accept()

    @Slot(str)
    def _failed(self, message: str) -> None:
        self._set_busy(False)
        self.show_error(message)
        self.passphrase.selectAll()
        self.passphrase.setFocus()


def _default_label() -> str:
    """The key slot's label: the OS user's name where it can name a file, else "owner"."""
    try:
        return check_label(getpass.getuser())
    except (KeyError, OSError, UsageError):
        return "owner"
