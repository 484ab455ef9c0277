"""Creating and unlocking the vault from the desktop app, with the real key derivation."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog
from pytestqt.qtbot import QtBot

from appliance.registry import Registry
from appliance.vault import Vault, has_vault
from appliance.vault.strength import estimate
from appliance.workspace import Workspace
from gui.widgets.passphrase_dialog import PassphraseDialog
from gui.widgets.second_slot import SecondSlotOffer

GOOD = "correct horse battery staple"


def _dialog(qtbot: QtBot, ws: Workspace, *, create: bool) -> PassphraseDialog:
    dialog = PassphraseDialog(ws, create=create)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_create_checks_the_fields_before_any_work(qtbot: QtBot, ws: Workspace) -> None:
    dialog = _dialog(qtbot, ws, create=True)
    dialog.submit()
    assert dialog.error.text() == "Enter a passphrase."
    # The core's rule (appliance.vault.passphrase_rules), with its own words: a space-only
    # or mostly-space passphrase is as weak as a short one.
    for weak in ("short", " " * 10, "a b c d e f g"):
        dialog.passphrase.setText(weak)
        dialog.confirm.setText(weak)
        dialog.submit()
        assert dialog.error.text() == (
            "The passphrase must have at least 8 characters besides spaces; a few unrelated "
            "words make a good one."
        )
    dialog.passphrase.setText(GOOD)
    dialog.confirm.setText(GOOD + "!")
    dialog.submit()
    assert dialog.error.text() == "The two passphrases differ."
    assert dialog.task is None
    assert not has_vault(ws)


def test_create_then_unlock_then_wrong_passphrase(qtbot: QtBot, ws: Workspace) -> None:
    dialog = _dialog(qtbot, ws, create=True)
    dialog.passphrase.setText(GOOD)
    dialog.confirm.setText(GOOD)
    with qtbot.waitSignal(dialog.finished, timeout=60_000):
        dialog.submit()
        assert dialog.busy.isVisible()  # the GUI thread is free while Argon2id runs
    assert dialog.result() == QDialog.DialogCode.Accepted
    assert dialog.vault is not None
    assert has_vault(ws)
    created_key = dialog.vault.master_key
    # Born with its first keyed audit row, exactly as 'appliance init' makes it.
    with Registry.open(ws, audit_key=dialog.vault.audit_key, readonly=True) as reg:
        assert [r["action"] for r in reg.audit_rows()] == ["vault.create"]
        assert reg.verify_audit().keyed_rows == 1

    wrong = _dialog(qtbot, ws, create=False)
    wrong.passphrase.setText("not the passphrase")
    assert wrong.task is None
    wrong.submit()
    assert wrong.task is not None
    with qtbot.waitSignal(wrong.task.done, timeout=60_000):
        pass
    assert wrong.isVisible()
    assert "wrong passphrase" in wrong.error.text()
    assert wrong.vault is None
    assert wrong.buttons.isEnabled()

    right = _dialog(qtbot, ws, create=False)
    right.passphrase.setText(GOOD)
    with qtbot.waitSignal(right.finished, timeout=60_000):
        right.submit()
    assert right.vault is not None
    assert right.vault.master_key == created_key


def test_first_run_warns_and_shows_the_strength_as_it_is_typed(qtbot: QtBot, ws: Workspace) -> None:
    dialog = _dialog(qtbot, ws, create=True)
    assert "If the passphrase is lost, the data is lost" in dialog.intro.text()
    assert dialog.meter.isVisible()
    assert dialog.meter.sentence.text() == ""
    for typed in ("Summer2024!", "correct horse battery staple"):
        dialog.passphrase.setText(typed)
        assert dialog.meter.bar.value() == estimate(typed).score
        assert dialog.meter.sentence.text() == estimate(typed).sentence
    assert dialog.meter.bar.value() == 4
    unlock = _dialog(qtbot, ws, create=False)
    assert not unlock.meter.isVisible()  # no hint when unlocking


def test_the_offer_of_a_second_key_slot(qtbot: QtBot, ws: Workspace) -> None:
    vault = Vault.create(ws, GOOD, "alice", target_s=0)
    offer = SecondSlotOffer(vault, target_s=0)
    qtbot.addWidget(offer)
    offer.show()
    assert "if it is forgotten, the data is lost for good" in offer.text.text()
    add = offer.open_add()
    add.label.setText("safe")
    add.passphrase.setText("written down and kept in the safe")
    add.confirm.setText("written down and kept in the safe")
    assert add.meter.strength is not None
    with qtbot.waitSignal(offer.accepted, timeout=60_000):
        add.submit()
    assert offer.added is not None
    assert offer.added.label == "safe"
    assert Vault.unlock(ws, "written down and kept in the safe").label == "safe"
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        assert [r["object"] for r in reg.audit_rows(action="passphrase.add")] == ["safe"]
    declined = SecondSlotOffer(vault, target_s=0)
    qtbot.addWidget(declined)
    declined.show()
    with qtbot.waitSignal(declined.rejected):
        declined.later_button.click()
    assert [s.label for s in vault.slots()] == ["alice", "safe"]
