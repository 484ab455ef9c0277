"""Key slots that go wrong: damaged files, shared passphrases, weak new passphrases."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from appliance import workspace
from appliance.errors import IntegrityError, PassphraseError, UsageError
from appliance.vault import Vault, keyslots
from appliance.vault.kdf import KdfParams
from appliance.vault.passphrase_rules import check_new_passphrase, passphrase_problem

ALICE = "correct horse battery"
BOB = "bob has another one"
CAROL = "carol keeps her own"

pytestmark = pytest.mark.usefixtures("cheap_kdf")


@pytest.fixture
def three(tmp_path: Path) -> tuple[workspace.Workspace, Vault]:
    """A workspace with slots alice, bob and carol (minimum KDF cost)."""
    ws, _ = workspace.init(tmp_path / "ws")
    vault = Vault.create(ws, ALICE, "alice", target_s=0)
    vault.add_slot(BOB, "bob", target_s=0)
    vault.add_slot(CAROL, "carol", target_s=0)
    return ws, vault


def _doctor_kdf(path: Path, **kdf: object) -> None:
    data = json.loads(path.read_text())
    data["kdf"].update(kdf)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_text("{not json"), id="not-json"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(b"\xff\xfe" * 100), id="not-utf8"),
        pytest.param(lambda p: p.write_text("[1, 2]"), id="not-an-object"),
        pytest.param(lambda p: _doctor_kdf(p, memory_kib=2**40), id="absurd-memory"),
        pytest.param(lambda p: _doctor_kdf(p, iterations=10**9), id="absurd-iterations"),
        pytest.param(lambda p: _doctor_kdf(p, name="scrypt"), id="unknown-kdf"),
        pytest.param(lambda p: p.write_bytes(b" " * 20_000), id="too-large"),
    ],
)
def test_one_damaged_slot_is_skipped_with_a_warning(
    three: tuple[workspace.Workspace, Vault], damage: object
) -> None:
    ws, vault = three
    damage(ws.keys_dir / "alice.slot")  # type: ignore[operator]
    start = time.perf_counter()
    opened = Vault.unlock(ws, BOB)
    # The damaged file costs no key derivation: its bounds are checked first.
    assert time.perf_counter() - start < 2
    assert opened.label == "bob"
    assert opened.master_key == vault.master_key
    assert len(opened.warnings) == 1
    assert "key slot 'alice' was skipped" in opened.warnings[0]
    assert "appliance passphrase remove alice" in opened.warnings[0]
    assert Vault.unlock(ws, CAROL).label == "carol"
    assert [s.label for s in keyslots.read_slots(ws)] == ["bob", "carol"]
    # Alice herself learns that her slot is damaged, not that her passphrase is wrong.
    with pytest.raises(IntegrityError, match=r"key slot\(s\) 'alice' are damaged"):
        Vault.unlock(ws, ALICE)
    # A stranger still gets "wrong passphrase"-class refusal, never the master key.
    with pytest.raises(IntegrityError, match="no usable key slot"):
        Vault.unlock(ws, "somebody else entirely")


def test_slot_whose_seal_is_broken_is_skipped_for_the_others(
    three: tuple[workspace.Workspace, Vault],
) -> None:
    ws, _ = three
    path = ws.keys_dir / "alice.slot"
    data = json.loads(path.read_text())
    sealed = bytearray(base64.b64decode(data["sealed_master_key"]))
    sealed[0] ^= 1
    data["sealed_master_key"] = base64.b64encode(bytes(sealed)).decode()
    path.write_text(json.dumps(data))
    # Bob's passphrase does not pass alice's check, so her slot is simply not his.
    assert Vault.unlock(ws, BOB).warnings == ()
    with pytest.raises(IntegrityError, match="'alice'"):
        Vault.unlock(ws, ALICE)


def test_every_slot_damaged_is_an_integrity_error(tmp_path: Path) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    Vault.create(ws, ALICE, "alice", target_s=0)
    (ws.keys_dir / "alice.slot").write_text("{not json")
    with pytest.raises(IntegrityError, match=r"every key slot .* is damaged"):
        keyslots.read_slots(ws)
    with pytest.raises(IntegrityError, match="every key slot"):
        Vault.unlock(ws, ALICE)


def test_damaged_slot_can_be_removed_but_not_the_last_usable_one(
    tmp_path: Path,
) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    vault = Vault.create(ws, ALICE, "alice", target_s=0)
    vault.add_slot(BOB, "bob", target_s=0)
    (ws.keys_dir / "bob.slot").write_text("garbage")
    with pytest.raises(UsageError, match="last one"):
        vault.remove_slot("alice")
    vault.remove_slot("bob")
    assert keyslots.scan_slots(ws)[1] == []
    assert Vault.unlock(ws, ALICE).warnings == ()


def test_new_passphrase_that_opens_another_slot_is_refused(
    three: tuple[workspace.Workspace, Vault],
) -> None:
    ws, vault = three
    before = {p.name: p.read_bytes() for p in ws.keys_dir.iterdir()}
    with pytest.raises(UsageError, match="already opens key slot 'bob'"):
        vault.add_slot(BOB, "dave", target_s=0)
    with pytest.raises(UsageError, match="already opens key slot 'alice'"):
        vault.add_slot(ALICE, "dave", target_s=0)
    # Changing to somebody else's passphrase would make two people share one: refused too.
    with pytest.raises(UsageError, match="already opens key slot 'carol'"):
        vault.change_passphrase(CAROL, target_s=0)
    assert {p.name: p.read_bytes() for p in ws.keys_dir.iterdir()} == before
    # Re-sealing one's own slot under the same passphrase is no conflict.
    assert vault.change_passphrase(ALICE, target_s=0).label == "alice"


def test_change_acts_on_the_slot_the_passphrase_opened(
    three: tuple[workspace.Workspace, Vault],
) -> None:
    ws, _ = three
    bob = Vault.unlock(ws, BOB)
    alice_slot = (ws.keys_dir / "alice.slot").read_bytes()
    slot = bob.change_passphrase("bob's brand new one", target_s=0)
    assert slot.label == "bob"
    assert (ws.keys_dir / "alice.slot").read_bytes() == alice_slot
    assert Vault.unlock(ws, "bob's brand new one").label == "bob"
    with pytest.raises(PassphraseError):
        Vault.unlock(ws, BOB)


def test_slots_opened_by_finds_every_slot_of_a_shared_passphrase(
    three: tuple[workspace.Workspace, Vault],
) -> None:
    ws, vault = three
    # A workspace made before the duplicate check could hold two slots with one passphrase.
    kdf = KdfParams(1024, 1, 1, b"s" * 16)
    first = keyslots.read_slots(ws)[0]
    legacy = keyslots.seal_slot(
        ws.keys_dir / "dave.slot", "dave", first.vault_id, vault.master_key, BOB, kdf
    )
    (ws.keys_dir / "dave.slot").write_bytes(legacy.to_bytes())
    assert [s.label for s in keyslots.slots_opened_by(ws, BOB)] == ["bob", "dave"]
    assert Vault.unlock(ws, BOB, "dave").label == "dave"


@pytest.mark.parametrize(
    "weak",
    [
        " " * 10,
        "\t" * 12,
        " \u00a0 \u2003 " * 4,  # no-break and em spaces are spaces too
        "a b c d e f g",
        "short",
        "",
        "       seven  ",
    ],
)
def test_weak_new_passphrases_are_refused_by_one_rule(tmp_path: Path, weak: str) -> None:
    assert passphrase_problem(weak) is not None
    with pytest.raises(UsageError, match="at least 8 characters besides spaces"):
        check_new_passphrase(weak)
    ws, _ = workspace.init(tmp_path / "ws")
    with pytest.raises(UsageError, match="besides spaces"):
        Vault.create(ws, weak, "alice", target_s=0)
    assert not keyslots.slot_files(ws)


@pytest.mark.parametrize(
    "good", ["eight chr", "abcdefgh", "  padded but long enough  ", "пароль-ключ"]
)
def test_acceptable_passphrases_pass_the_rule(good: str) -> None:
    assert passphrase_problem(good) is None
    assert check_new_passphrase(good) == good
