"""``appliance init`` with a passphrase and ``appliance passphrase change|add|remove|list``."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.cli.context import resolve_passphrase
from appliance.errors import PassphraseError
from appliance.registry import Registry
from appliance.workspace import open_workspace
from tests.helpers.cli import CliResult, CliRunner

ALICE = "alice's long passphrase"
BOB = "bob has another one"
DATA = Path(__file__).resolve().parents[1] / "data" / "datasets" / "valid"


def _ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, result.stderr
    return result


def _as(passphrase: str, **extra: str) -> dict[str, str]:
    return {"APPLIANCE_PASSPHRASE": passphrase, **extra}


def test_init_needs_a_good_passphrase_before_creating_anything(
    cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    result = cli("init")
    assert result.returncode == 1
    assert "no terminal to ask on" in result.err_lines[-1]
    assert not home.exists()

    short = cli("init", "--kdf-time", "0", env=_as("short"))
    assert short.returncode == 2
    assert short.err_lines == [
        "error: the passphrase must have at least 8 characters besides spaces; a few unrelated "
        "words make a good one"
    ]
    assert not home.exists()

    # A workspace the desktop app created but whose passphrase dialog was cancelled gets its
    # vault from a later init.
    from appliance import workspace

    workspace.init(home)
    refused = cli("dataset", "import", str(DATA / "text.txt"), "--name", "x", env=_as(ALICE))
    assert refused.returncode == 1
    assert "has no key slot" in refused.err_lines[-1]

    secret_file = tmp_path / "pass.txt"
    secret_file.write_text(ALICE + "\n")
    made = _ok(
        cli("--passphrase-file", str(secret_file), "init", "--label", "alice", "--kdf-time", "0")
    )
    assert "Added a vault to" in made.stdout
    assert "Set the passphrase of key slot 'alice' (Argon2id, 64 MiB, 3 passes)" in made.stdout
    assert (home / "keys" / "alice.slot").is_file()
    # init on an existing workspace changes nothing, and checks the passphrase it was given.
    wrong = cli("init", env=_as("whatever it is"))
    assert wrong.returncode == 1
    assert "already exists" in wrong.stdout
    assert "wrong passphrase for workspace" in wrong.err_lines[-1]
    again = _ok(cli("init", "--label", "zed", env=_as(ALICE)))
    assert "already exists" in again.stdout
    assert "opens key slot 'alice'" in again.stdout
    assert "--label is ignored" in again.stderr
    unchecked = _ok(cli("init"))
    assert "passphrase was not checked" in unchecked.stdout
    assert sorted(p.name for p in (home / "keys").iterdir()) == ["alice.slot"]


def test_change_add_remove(cli: CliRunner, home: Path) -> None:
    _ok(cli("init", "--label", "alice", "--kdf-time", "0", env=_as(ALICE)))
    _ok(cli("dataset", "import", str(DATA / "messages.jsonl"), "--name", "m", env=_as(ALICE)))
    files = {p: p.read_bytes() for p in (home / "datasets").iterdir()}
    assert sorted(p.suffix for p in files) == [".enc", ".json"]  # the data and its metadata

    wrong = cli(
        "passphrase",
        "change",
        "--kdf-time",
        "0",
        env=_as("not alice's", APPLIANCE_NEW_PASSPHRASE="whatever new one"),
    )
    assert wrong.returncode == 1
    assert "wrong passphrase for workspace" in wrong.err_lines[-1]
    slot_before = (home / "keys" / "alice.slot").read_bytes()

    new = "alice's new passphrase"
    _ok(
        cli("passphrase", "change", "--kdf-time", "0", env=_as(ALICE, APPLIANCE_NEW_PASSPHRASE=new))
    )
    assert (home / "keys" / "alice.slot").read_bytes() != slot_before
    assert {p: p.read_bytes() for p in (home / "datasets").iterdir()} == files
    old = cli("dataset", "show", "m", env=_as(ALICE))
    assert old.returncode == 1
    assert "wrong passphrase for workspace" in old.err_lines[-1]
    _ok(cli("dataset", "show", "m", env=_as(new)))

    _ok(
        cli(
            "passphrase",
            "add",
            "--label",
            "bob",
            "--kdf-time",
            "0",
            env=_as(new, APPLIANCE_NEW_PASSPHRASE=BOB),
        )
    )
    taken = cli(
        "passphrase",
        "add",
        "--label",
        "bob",
        "--kdf-time",
        "0",
        env=_as(new, APPLIANCE_NEW_PASSPHRASE="yet another one"),
    )
    assert taken.returncode == 2
    slots = json.loads(_ok(cli("passphrase", "list", "--json")).stdout)
    assert [s["label"] for s in slots] == ["alice", "bob"]
    assert all(s["memory_kib"] >= 65536 and s["iterations"] >= 3 for s in slots)
    _ok(cli("dataset", "show", "m", env=_as(BOB)))

    unconfirmed = cli("passphrase", "remove", "alice", env=_as(BOB))
    assert unconfirmed.returncode == 2
    _ok(cli("passphrase", "remove", "alice", "--yes", env=_as(BOB)))
    assert cli("dataset", "show", "m", env=_as(new)).returncode == 1
    last = cli("passphrase", "remove", "bob", "--yes", env=_as(BOB))
    assert last.returncode == 2
    assert "is the last one" in last.err_lines[-1]
    missing = cli("passphrase", "remove", "carol", "--yes", env=_as(BOB))
    assert missing.returncode == 1
    assert "no key slot 'carol' (it has: bob)" in missing.err_lines[-1]
    assert {p: p.read_bytes() for p in (home / "datasets").iterdir()} == files

    with Registry.open(open_workspace(home)) as reg:
        actions = [r["action"] for r in reg.audit_rows() if r["action"].startswith("passphrase")]
    assert actions == ["passphrase.change", "passphrase.add", "passphrase.remove"]


def test_cli_slots_are_personal_weak_passphrases_refused_damage_skipped(
    cli: CliRunner, home: Path
) -> None:
    spaces = cli("init", "--kdf-time", "0", env=_as(" " * 10))
    assert spaces.returncode == 2
    assert "besides spaces" in spaces.err_lines[-1]
    assert not home.exists()
    _ok(cli("init", "--label", "alice", "--kdf-time", "0", env=_as(ALICE)))
    _ok(
        cli(
            "passphrase", "add", "--label", "bob", "--kdf-time", "0",
            env=_as(ALICE, APPLIANCE_NEW_PASSPHRASE=BOB),
        )
    )  # fmt: skip
    shared = cli(
        "passphrase", "add", "--label", "dave", "--kdf-time", "0",
        env=_as(BOB, APPLIANCE_NEW_PASSPHRASE=ALICE),
    )  # fmt: skip
    assert shared.returncode == 2
    assert shared.err_lines[-1].startswith("error: this passphrase already opens key slot 'alice'")
    assert not (home / "keys" / "dave.slot").exists()

    weak = cli(
        "passphrase", "change", "--kdf-time", "0",
        env=_as(BOB, APPLIANCE_NEW_PASSPHRASE=" " * 10),
    )  # fmt: skip
    assert weak.returncode == 2
    assert "besides spaces" in weak.err_lines[-1]
    alice_slot = (home / "keys" / "alice.slot").read_bytes()
    changed = _ok(
        cli(
            "passphrase", "change", "--kdf-time", "0",
            env=_as(BOB, APPLIANCE_NEW_PASSPHRASE="bob's second passphrase"),
        )
    )  # fmt: skip
    assert "Changed the passphrase of key slot 'bob'" in changed.stdout
    assert (home / "keys" / "alice.slot").read_bytes() == alice_slot

    # One damaged slot file: the other person still gets in, and is told about it.
    (home / "keys" / "alice.slot").write_text("{not json")
    listed = _ok(cli("passphrase", "list"))
    assert "DAMAGED" in listed.stdout
    opened = _ok(cli("audit", "--limit", "1", env=_as("bob's second passphrase")))
    assert "warning: key slot 'alice' was skipped" in opened.stderr
    locked_out = cli("audit", env=_as(ALICE))
    assert locked_out.returncode == 1
    assert "'alice' are damaged" in locked_out.err_lines[-1]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (os.mkfifo, "is a FIFO (named pipe), not a regular file"),
        (
            lambda p: p.symlink_to("/dev/zero"),
            "is a character device (such as /dev/zero), not a regular file",
        ),
        (
            lambda p: p.symlink_to("/dev/urandom"),
            "is a character device (such as /dev/zero), not a regular file",
        ),
        (lambda p: p.mkdir(), "is a folder, not a regular file"),
    ],
    ids=["fifo", "dev-zero", "dev-urandom", "folder"],
)
def test_passphrase_file_that_is_not_a_file_is_refused_without_blocking(
    tmp_path: Path, make: Callable[[Path], None], problem: str
) -> None:
    path = tmp_path / "secret"
    make(path)
    signal.alarm(20)  # a FIFO without a writer must not block; fail instead of hanging
    try:
        with pytest.raises(PassphraseError) as info:
            resolve_passphrase(path)
    finally:
        signal.alarm(0)
    assert str(info.value) == (
        f"the passphrase file {path} {problem}; write the passphrase to a file only you can "
        "read (mode 600), or set APPLIANCE_PASSPHRASE"
    )


def test_passphrase_file_too_large_or_not_utf8(tmp_path: Path) -> None:
    sparse = tmp_path / "huge"
    with sparse.open("wb") as handle:
        handle.truncate(50 * 1024**3)
    with pytest.raises(PassphraseError, match=r"has 53,687,091,200 bytes, more than a passphrase"):
        resolve_passphrase(sparse)
    latin1 = tmp_path / "latin1"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(PassphraseError, match=r"cannot read the passphrase file .*latin1: 'utf-8'"):
        resolve_passphrase(latin1)
    with pytest.raises(PassphraseError, match=r"missing: No such file or directory; check"):
        resolve_passphrase(tmp_path / "missing")
    good = tmp_path / "good"
    good.write_text("a fine passphrase\n")
    assert resolve_passphrase(good) == "a fine passphrase"


def test_cli_does_not_hang_on_a_fifo_passphrase_file(cli: CliRunner, tmp_path: Path) -> None:
    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    result = cli("--passphrase-file", str(fifo), "init", "--kdf-time", "0", timeout=60)
    assert result.returncode == 1
    assert result.err_lines == [
        f"error: the passphrase file {fifo} is a FIFO (named pipe), not a regular file; write "
        "the passphrase to a file only you can read (mode 600), or set APPLIANCE_PASSPHRASE"
    ]
    assert not cli.home.exists()
