"""Key slots, passphrases and the KDF: the vault's key hierarchy."""

from __future__ import annotations

import base64
import json
import os
import time
import unicodedata
from pathlib import Path

import pytest

from appliance import workspace
from appliance.errors import IntegrityError, NotFoundError, PassphraseError, UsageError
from appliance.vault import Vault, derive_audit_key, has_vault, new_object_id, read_object
from appliance.vault import kdf as kdf_mod
from appliance.vault.kdf import MIN_ITERATIONS, MIN_MEMORY_KIB, KdfParams, calibrate
from appliance.vault.keyslots import change_passphrase

PASS = "correct horse battery"


@pytest.fixture(scope="module")
def vault_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[workspace.Workspace, Vault]:
    """One workspace with a vault (slot "alice") and one object, shared by read-only tests."""
    ws, _ = workspace.init(tmp_path_factory.mktemp("vault") / "ws")
    vault = Vault.create(ws, PASS, "alice", target_s=0)
    return ws, vault


def test_create_and_unlock(vault_ws: tuple[workspace.Workspace, Vault]) -> None:
    ws, vault = vault_ws
    assert has_vault(ws)
    again = Vault.unlock(ws, PASS)
    assert again.master_key == vault.master_key
    assert again.label == "alice"
    slot_file = ws.keys_dir / "alice.slot"
    assert oct(slot_file.stat().st_mode & 0o777) == "0o600"
    assert vault.master_key not in slot_file.read_bytes()
    assert PASS.encode() not in slot_file.read_bytes()
    assert "master_key=" not in repr(vault)


def test_many_wrong_passphrases_are_all_refused(
    vault_ws: tuple[workspace.Workspace, Vault],
) -> None:
    ws, _ = vault_ws
    wrong = [
        "",
        " ",
        PASS.upper(),
        PASS + " ",
        " " + PASS,
        PASS[:-1],
        PASS + "\n",
        PASS.replace(" ", ""),
        PASS.replace("o", "0"),
        "correct horse battery staple",
        "Correct horse battery",
        "correct  horse battery",
        "correct\thorse battery",
        "password",
        "12345678",
        "correcthorse battery",
        "c" * 1000,
        "\u00e9" * 10,
        "correct horse batter\u00fd",
        "\x00" + PASS,
    ]
    for guess in wrong:
        with pytest.raises(PassphraseError) as info:
            Vault.unlock(ws, guess)
        assert str(info.value).startswith(f"wrong passphrase for workspace {ws.home}")


def test_passphrase_is_unicode_normalised(tmp_path: Path) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    composed = "caf\u00e9 au lait, s'il vous pla\u00eet"
    vault = Vault.create(ws, composed, "alice", target_s=0)
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert Vault.unlock(ws, decomposed).master_key == vault.master_key


def test_slots_change_and_remove(tmp_path: Path) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    vault = Vault.create(ws, PASS, "alice", target_s=0)
    oid = new_object_id()
    obj = ws.datasets_dir / f"{oid}.enc"
    vault.write(obj, oid, [b"secret rows\n" * 10_000])
    before = obj.read_bytes()

    vault.add_slot("bob's own passphrase", "bob", target_s=0)
    bob_slot = (ws.keys_dir / "bob.slot").read_bytes()
    assert Vault.unlock(ws, "bob's own passphrase").label == "bob"
    with pytest.raises(UsageError, match="exists already"):
        vault.add_slot("another passphrase", "bob", target_s=0)

    change_passphrase(ws, PASS, "a brand new passphrase", target_s=0)
    assert obj.read_bytes() == before  # no dataset file is rewritten
    assert (ws.keys_dir / "bob.slot").read_bytes() == bob_slot  # nor anybody else's slot
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        Vault.unlock(ws, PASS)
    changed = Vault.unlock(ws, "a brand new passphrase")
    assert changed.label == "alice"
    assert bytes(changed.read(obj, oid)) == b"secret rows\n" * 10_000

    changed.remove_slot("alice")
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        Vault.unlock(ws, "a brand new passphrase")
    with pytest.raises(NotFoundError, match="no key slot 'alice'"):
        changed.remove_slot("alice")
    with pytest.raises(UsageError, match="last one"):
        changed.remove_slot("bob")
    assert Vault.unlock(ws, "bob's own passphrase").master_key == vault.master_key


def test_short_passphrase_and_bad_label_are_refused(tmp_path: Path) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    with pytest.raises(UsageError, match="at least 8 characters"):
        Vault.create(ws, "short", "alice", target_s=0)
    with pytest.raises(UsageError, match="invalid key slot label"):
        Vault.create(ws, PASS, "../evil", target_s=0)
    assert not has_vault(ws)
    with pytest.raises(PassphraseError, match="has no key slot"):
        Vault.unlock(ws, PASS)


def _doctor(path: Path, **kdf: object) -> None:
    data = json.loads(path.read_text())
    data["kdf"].update(kdf)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "kdf",
    [
        {"memory_kib": 2**40},
        {"memory_kib": 2**31},
        {"iterations": 10**9},
        {"lanes": 100_000},
        {"memory_kib": 1024 * 1024, "iterations": 64},
        {"memory_kib": 8},
        {"iterations": 1},
        {"iterations": True},
        {"memory_kib": "65536"},
        {"salt": "c2hvcnQ="},
        {"name": "scrypt"},
    ],
)
def test_absurd_kdf_parameters_are_refused_quickly(tmp_path: Path, kdf: dict[str, object]) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    Vault.create(ws, PASS, "alice", target_s=0)
    _doctor(ws.keys_dir / "alice.slot", **kdf)
    start = time.perf_counter()
    with pytest.raises(IntegrityError, match=r"alice\.slot"):
        Vault.unlock(ws, PASS)
    assert time.perf_counter() - start < 0.05


def test_damaged_slot_is_not_called_a_wrong_passphrase(tmp_path: Path) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    Vault.create(ws, PASS, "alice", target_s=0)
    path = ws.keys_dir / "alice.slot"
    data = json.loads(path.read_text())
    sealed = bytearray(base64.b64decode(data["sealed_master_key"]))
    sealed[3] ^= 1
    data["sealed_master_key"] = base64.b64encode(bytes(sealed)).decode()
    path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match=r"key slot 'alice' .* is damaged"):
        Vault.unlock(ws, PASS)
    path.write_text("{not json")
    with pytest.raises(IntegrityError, match="damaged"):
        Vault.unlock(ws, PASS)


def test_slot_copied_from_another_workspace(tmp_path: Path) -> None:
    ws1, _ = workspace.init(tmp_path / "a")
    ws2, _ = workspace.init(tmp_path / "b")
    Vault.create(ws1, PASS, "alice", target_s=0)
    Vault.create(ws2, PASS, "bob", target_s=0)
    (ws1.keys_dir / "bob.slot").write_bytes((ws2.keys_dir / "bob.slot").read_bytes())
    with pytest.raises(IntegrityError, match="different workspaces"):
        Vault.unlock(ws1, PASS)


def test_calibration_never_goes_below_the_minimums(monkeypatch: pytest.MonkeyPatch) -> None:
    floor = calibrate(0)
    assert (floor.memory_kib, floor.iterations) == (MIN_MEMORY_KIB, MIN_ITERATIONS)
    assert len(floor.salt) == 16
    assert floor.salt != calibrate(0).salt

    # A fake clock: the timed minimum derivation "takes" 0.1 s.
    ticks = iter([0.0, 0.1])
    monkeypatch.setattr(KdfParams, "derive", lambda self, p: b"")
    scaled = calibrate(0.5, clock=lambda: next(ticks))
    assert scaled.memory_kib == 4 * MIN_MEMORY_KIB  # memory first, up to 256 MiB
    assert scaled.iterations == 4  # then iterations: 3 * 5 / 4, rounded
    ticks = iter([0.0, 0.01])
    slow = calibrate(2.0, clock=lambda: next(ticks))
    assert slow.memory_kib == kdf_mod.CALIBRATION_MAX_MEMORY_KIB
    assert slow.memory_kib * slow.iterations <= kdf_mod.MAX_WORK
    ticks = iter([0.0, 1.0])
    fast_target = calibrate(0.5, clock=lambda: next(ticks))
    assert (fast_target.memory_kib, fast_target.iterations) == (MIN_MEMORY_KIB, MIN_ITERATIONS)


def test_calibrated_slot_takes_about_the_target() -> None:
    params = calibrate(0.3)
    start = time.perf_counter()
    params.derive("x" * 12)
    elapsed = time.perf_counter() - start
    # Loose: the 2-core CI machine is shared, but a slot must cost real time.
    assert 0.05 < elapsed < 3.0
    assert params.memory_kib >= MIN_MEMORY_KIB
    assert params.iterations >= MIN_ITERATIONS


def test_audit_key(vault_ws: tuple[workspace.Workspace, Vault]) -> None:
    _, vault = vault_ws
    key = derive_audit_key(vault.master_key)
    assert len(key) == 32
    assert key != vault.master_key
    assert vault.audit_key == key
    assert derive_audit_key(os.urandom(32)) != key


def test_object_of_this_vault_opens_only_with_its_key(
    vault_ws: tuple[workspace.Workspace, Vault], tmp_path: Path
) -> None:
    ws, vault = vault_ws
    oid = new_object_id()
    path = tmp_path / "o.enc"
    vault.write(path, oid, [b"row\n"])
    other, _ = workspace.init(tmp_path / "other")
    stranger = Vault.create(other, PASS, "eve", target_s=0)
    with pytest.raises(IntegrityError, match=r"damaged or was modified \(header\)"):
        read_object(path, stranger.master_key, oid)
    assert bytes(Vault.unlock(ws, PASS).read(path, oid)) == b"row\n"
