"""The Settings page over a real workspace: size by kind, key slots, auto-lock, GPUs, About."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from appliance import datasets, preferences
from appliance.errors import PassphraseError
from appliance.gpu import GpuReading, GpuState
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import Workspace
from gui.pages.settings import SettingsPage

ORGFACTS = Path(__file__).resolve().parents[1] / "data" / "orgfacts" / "orgfacts.jsonl"
OLD = "settings page passphrase"
NEW = "a brand new passphrase for alice"
WAIT_MS = 60_000


@pytest.fixture
def workspace(ws: Workspace) -> UnlockedWorkspace:
    workspace = UnlockedWorkspace(Vault.create(ws, OLD, "alice", target_s=0))
    with workspace.registry() as reg:
        datasets.import_file(workspace.vault, reg, ORGFACTS, "orgfacts")
    return workspace


def _page(qtbot: QtBot, workspace: UnlockedWorkspace | None, home: Path) -> SettingsPage:
    page = SettingsPage(home, workspace)
    page.kdf_target_s = 0
    qtbot.addWidget(page)
    page.resize(1100, 900)
    page.show()
    return page


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _table(table: object) -> list[list[str]]:
    rows = []
    for r in range(table.rowCount()):  # type: ignore[attr-defined]
        cells = [table.item(r, c) for c in range(table.columnCount())]  # type: ignore[attr-defined]
        rows.append([c.text() if c is not None else "" for c in cells])
    return rows


def test_workspace_size_by_kind(qtbot: QtBot, workspace: UnlockedWorkspace) -> None:
    page = _page(qtbot, workspace, workspace.ws.home)
    assert page.workspace_label.text() == str(workspace.ws.home)
    assert page.usage_task is not None
    qtbot.waitUntil(lambda: not page.usage_task.running, timeout=WAIT_MS)  # type: ignore[union-attr]
    rows = {r[0]: r for r in _table(page.usage_table)}
    encrypted = [p for p in workspace.ws.datasets_dir.iterdir() if p.is_file()]
    assert rows["Datasets (encrypted)"][2] == str(len(encrypted))
    assert "Key slots" in rows
    assert "Registry (SQLite)" in rows
    assert page.usage_label.text().endswith("files")


def test_change_passphrase_then_a_fresh_unlock(qtbot: QtBot, workspace: UnlockedWorkspace) -> None:
    page = _page(qtbot, workspace, workspace.ws.home)
    assert page.slot_labels() == ["alice"]
    assert _table(page.slots_table)[0][0] == "alice (you)"
    before = _digests(workspace.ws.datasets_dir)
    dialog = page.open_change_dialog()
    assert dialog is not None
    dialog.passphrase.setText("short")
    dialog.confirm.setText("short")
    dialog.submit()
    assert dialog.error.text() == (
        "The passphrase must have at least 8 characters besides spaces; a few unrelated words "
        "make a good one."
    )
    assert dialog.task is None
    dialog.passphrase.setText(NEW)
    assert dialog.meter.strength is not None
    assert dialog.meter.sentence.text() == dialog.meter.strength.sentence
    dialog.confirm.setText(NEW + "!")
    dialog.submit()
    assert dialog.error.text() == "The two passphrases differ."
    dialog.confirm.setText(NEW)
    with qtbot.waitSignal(dialog.accepted, timeout=WAIT_MS):
        dialog.submit()
    assert page.slots_status.text() == "Changed the passphrase of key slot 'alice'."
    workspace.lock()
    # As after a restart: only the key slot files and the passphrase.
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        Vault.unlock(workspace.ws, OLD)
    fresh = Vault.unlock(workspace.ws, NEW)
    assert _digests(workspace.ws.datasets_dir) == before
    with UnlockedWorkspace(fresh).registry() as reg:
        version = datasets.resolve(reg, "orgfacts")
        assert len(datasets.load_rows(fresh, version)) == 80
        assert [r["object"] for r in reg.audit_rows(action="passphrase.change")] == ["alice"]


def test_add_and_remove_key_slots_never_the_last(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    page = _page(qtbot, workspace, workspace.ws.home)
    dialog = page.open_add_dialog()
    assert dialog is not None
    dialog.label.setText("../bob")
    dialog.passphrase.setText("bob's own long passphrase")
    dialog.confirm.setText("bob's own long passphrase")
    dialog.submit()
    assert dialog.error.text().startswith("Invalid key slot label '../bob'")
    dialog.label.setText("alice")
    dialog.submit()
    with qtbot.waitSignal(dialog.task.done, timeout=WAIT_MS):  # type: ignore[union-attr]
        pass
    assert dialog.error.text() == "Key slot 'alice' exists already; choose another label."
    dialog.label.setText("bob")
    with qtbot.waitSignal(dialog.accepted, timeout=WAIT_MS):
        dialog.submit()
    assert page.slot_labels() == ["alice", "bob"]
    assert Vault.unlock(workspace.ws, "bob's own long passphrase").label == "bob"
    assert page.remove_question("alice").endswith("keep another passphrase at hand.")
    assert page.remove_question("bob") == (
        "Remove key slot 'bob'? Its passphrase will stop opening this workspace."
    )
    task = page.remove_slot("bob")
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        pass
    assert page.slot_labels() == ["alice"]
    task = page.remove_slot("alice")
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        pass
    assert page.slots_status.text().startswith("Key slot 'alice' is the last one of workspace")
    assert page.slot_labels() == ["alice"]
    assert Vault.unlock(workspace.ws, OLD).label == "alice"


def test_auto_lock_minutes_and_training_gpus_are_stored(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    page = _page(qtbot, workspace, workspace.ws.home)
    assert page.auto_lock.value() == 15
    with qtbot.waitSignal(page.auto_lock_changed) as blocker:
        page.auto_lock.setValue(0)
    assert blocker.args == [0]
    assert page.auto_lock.text() == "never"
    assert preferences.load(workspace.ws).auto_lock_minutes == 0
    gib = 1024**3
    page.show_gpus(
        GpuState(
            gpus=[
                GpuReading(0, "NVIDIA H200", 1 * gib, 141 * gib, 0, 30),
                GpuReading(1, "NVIDIA H200", 2 * gib, 141 * gib, 0, 31),
            ],
            driver_version="580.00",
        )
    )
    assert sorted(page.gpu_boxes) == [0, 1]
    assert all(box.isChecked() for box in page.gpu_boxes.values())
    assert str(preferences.settings_path(workspace.ws)) in page.gpu_label.text()
    # The Train page's device picker follows the change (the window connects the signal).
    with qtbot.waitSignal(page.training_gpus_changed) as narrowed:
        page.gpu_boxes[1].setChecked(False)
    assert narrowed.args == [(0,)]
    stored = json.loads(preferences.settings_path(workspace.ws).read_text())
    assert stored == {"auto_lock_minutes": 0, "training_gpus": [0]}
    with qtbot.waitSignal(page.training_gpus_changed) as widened:
        page.gpu_boxes[1].setChecked(True)
    assert widened.args == [None]
    assert preferences.load(workspace.ws).training_gpus is None  # every GPU again
    page.show_gpus(GpuState(unavailable_reason="LibraryNotFound"))
    assert page.gpu_boxes == {}
    assert page.gpu_label.text() == (
        "No NVIDIA GPU found (LibraryNotFound): training runs on the CPU."
    )


def test_a_damaged_settings_file_is_reported_not_fatal(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    path = preferences.settings_path(workspace.ws)
    path.write_text("{oops")
    page = _page(qtbot, workspace, workspace.ws.home)
    assert page.settings_error.isVisible()
    assert f"delete {path} to go back to the default settings" in page.settings_error.text()
    assert page.auto_lock.value() == 15


def test_about_shows_versions_from_metadata_and_licences(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    page = _page(qtbot, workspace, workspace.ws.home)
    assert page.about.versions["torch"] == metadata.version("torch")
    assert page.about.versions["transformers"] == metadata.version("transformers")
    assert page.about.versions["peft"] == metadata.version("peft")
    assert page.about.versions["bitsandbytes"] == metadata.version("bitsandbytes")
    task = page.about.task
    assert task is not None
    qtbot.waitUntil(lambda: not task.running, timeout=WAIT_MS)
    names = {row[0].lower(): row for row in _table(page.about.table)}
    assert names["cryptography"][1] == metadata.version("cryptography")
    assert "installed packages' metadata" in page.about.source.text()


def test_without_an_unlocked_workspace_no_passphrase_is_offered(
    qtbot: QtBot, ws: Workspace
) -> None:
    page = _page(qtbot, None, ws.home)
    assert page.slot_labels() == []
    assert not page.change_button.isEnabled()
    assert page.open_change_dialog() is None
    assert page.state_label.text().startswith("ready (format 1")
