"""First run, after the passphrase is set: the offer to add a second key slot.

One passphrase is one point of failure: forgotten, or its owner gone, and every dataset is
unreadable. A second key slot (a colleague's passphrase, or one written down and kept in a safe)
opens the same workspace. The offer can be declined; Settings can add a slot any time.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QVBoxLayout, QWidget

from appliance.passphrases import add_key_slot
from appliance.vault import DEFAULT_TARGET_S, KeySlot, Vault
from gui.widgets.new_passphrase import NewPassphraseDialog

OFFER = (
    "<p><b>Your passphrase is set.</b> It is the only way into this workspace: if it is "
    "forgotten, the data is lost for good.</p>"
    "<p>Add a <b>second key slot</b> now: a passphrase for a colleague, or one you write "
    "down and keep in a safe. Either opens the same workspace; each can be removed later in "
    "Settings.</p>"
)


def add_slot_dialog(
    vault: Vault, parent: QWidget | None = None, target_s: float = DEFAULT_TARGET_S
) -> NewPassphraseDialog:
    """The dialog that adds a key slot to ``vault`` (label, passphrase twice, strength)."""

    def add(label: str, passphrase: str) -> KeySlot:
        return add_key_slot(vault, label, passphrase, target_s)

    return NewPassphraseDialog(
        "Add a key slot",
        "Another passphrase that opens this workspace: for a colleague, or to keep in a safe. "
        "It is a key slot of its own; removing it later leaves yours untouched.",
        add,
        ask_label=True,
        ok_text="Add key slot",
        parent=parent,
    )


class SecondSlotOffer(QDialog):
    """ "Add a second key slot?" with Add… and Not now."""

    def __init__(
        self, vault: Vault, parent: QWidget | None = None, target_s: float = DEFAULT_TARGET_S
    ) -> None:
        super().__init__(parent)
        self.vault = vault
        self.target_s = target_s
        self.added: KeySlot | None = None
        self.add_dialog: NewPassphraseDialog | None = None
        self.setWindowTitle("A second key slot")
        self.setMinimumWidth(520)
        layout = QVBoxLayout(self)
        self.text = QLabel(OFFER)
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.text)
        self.buttons = QDialogButtonBox()
        self.add_button = self.buttons.addButton(
            "Add a second key slot…", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.later_button = self.buttons.addButton(
            "Not now", QDialogButtonBox.ButtonRole.RejectRole
        )
        self.buttons.accepted.connect(self.open_add)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    @Slot()
    def open_add(self) -> NewPassphraseDialog:
        """Open the add-a-slot dialog; this offer closes once a slot was added."""
        dialog = add_slot_dialog(self.vault, self, self.target_s)
        dialog.accepted.connect(lambda: self._added(dialog))
        self.add_dialog = dialog
        dialog.open()
        return dialog

    def _added(self, dialog: NewPassphraseDialog) -> None:
        self.added = dialog.result_value
        self.accept()
