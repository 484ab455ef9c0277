"""The dataset verbs through the real CLI, and the canary: no plaintext anywhere on disk."""

from __future__ import annotations

import base64
import codecs
import json
import os
import sqlite3
from pathlib import Path

import pytest

from appliance.registry import Registry
from appliance.workspace import open_workspace
from tests.helpers.cli import CliResult, CliRunner

PASS = "correct horse battery"
CANARY = "Zq7-CANARY-\u00fc\u00df-5d1f0a9e"
"""Unique, with non-ASCII characters so that escaped and re-encoded forms differ."""


def _variants(secret: str) -> dict[str, bytes]:
    """Every encoding the appliance (or a library under it) could plausibly write."""
    raw = secret.encode("utf-8")
    forms: dict[str, bytes] = {}
    for codec in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "latin-1"):
        forms[codec] = secret.encode(codec)
    forms["json-escaped"] = json.dumps(secret).strip('"').encode("ascii")
    forms["unicode-escape"] = codecs.encode(secret, "unicode_escape")
    forms["lower"] = secret.lower().encode("utf-8")
    forms["hex"] = raw.hex().encode()
    forms["HEX"] = raw.hex().upper().encode()
    for shift in range(3):
        # The stable middle of base64 at each of the three byte alignments.
        encoded = base64.b64encode(b"\x00" * shift + raw)
        forms[f"base64+{shift}"] = encoded[4 : len(encoded) - 4]
        forms[f"base64url+{shift}"] = base64.urlsafe_b64encode(b"\x00" * shift + raw)[4:-4]
    # The ASCII head alone, in case only part of the string leaked.
    forms["ascii head"] = b"Zq7-CANARY-"
    forms["ascii head utf-16"] = "Zq7-CANARY-".encode("utf-16-le")
    return forms


def _search(folders: list[Path], secret: str) -> list[str]:
    hits = []
    forms = _variants(secret)
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            hits += [f"{path} ({name})" for name, form in forms.items() if form in data]
    return hits


def _ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_canary_never_reaches_the_disk(tmp_path: Path, tiny_llama: Path) -> None:
    home, temp, user_home = tmp_path / "ws", tmp_path / "tmp", tmp_path / "home"
    temp.mkdir()
    user_home.mkdir()
    env = {"APPLIANCE_PASSPHRASE": PASS, "TMPDIR": str(temp), "HOME": str(user_home)}
    cli = CliRunner(home)

    def run(*args: str) -> CliResult:
        return cli(*args, env=env)

    source = tmp_path / "src" / "notes.jsonl"
    source.parent.mkdir()
    rows = [
        {
            "messages": [
                {"role": "system", "content": f"Case file {CANARY}."},
                {"role": "user", "content": f"Who is {CANARY}?"},
                {"role": "assistant", "content": f"{CANARY} is the claimant."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Plain question"},
                {"role": "assistant", "content": "Plain answer"},
            ]
        },
        {"messages": [{"role": CANARY, "content": CANARY}]},  # invalid: skipped, not stored
    ]
    source.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")

    _ok(run("init", "--kdf-time", "0"))
    failed = run("dataset", "import", str(source), "--name", "canary")
    assert failed.returncode == 1
    assert failed.err_lines[-1].startswith("error: notes.jsonl: 1 invalid row")
    _ok(run("dataset", "import", str(source), "--name", "canary", "--skip-invalid"))
    _ok(
        run(
            "dataset",
            "import",
            str(source),
            "--name",
            "canary",
            "--skip-invalid",
            "--format",
            "messages",
            "--eval-fraction",
            "0",
        )
    )
    _ok(run("dataset", "list"))
    listed = json.loads(_ok(run("dataset", "list", "--json")).stdout)
    assert [(v["name"], v["version"]) for v in listed] == [("canary", 1), ("canary", 2)]
    assert listed[0]["skipped_rows"] == 1
    shown = json.loads(_ok(run("dataset", "show", "canary@1", "--json", "--rows", "5")).stdout)
    assert CANARY in json.dumps(shown["preview"], ensure_ascii=False)
    _ok(run("dataset", "show", "canary", "--rows", "2"))
    tokens = json.loads(
        _ok(
            run(
                "dataset",
                "show",
                "canary@1",
                "--json",
                "--rows",
                "0",
                "--model",
                str(tiny_llama),
                "--max-length",
                "40",
            )
        ).stdout
    )["tokens"]
    assert tokens["min"] <= tokens["median"] <= tokens["p95"] <= tokens["max"]
    assert tokens["over_max_length"] == 1  # the canary row is longer than 40 tokens
    exported = tmp_path / "exports" / "canary.jsonl"
    exported.parent.mkdir()
    _ok(run("dataset", "export", "canary@1", "--out", str(exported)))
    assert CANARY in exported.read_text(encoding="utf-8")  # the one place the user asked for
    _ok(run("dataset", "delete", "canary@2", "--yes"))
    _ok(
        cli(
            "passphrase",
            "change",
            "--kdf-time",
            "0",
            env={**env, "APPLIANCE_NEW_PASSPHRASE": "another good passphrase"},
        )
    )

    assert (home / "registry.sqlite").is_file()
    assert _search([home, temp, user_home], CANARY) == []
    # The check itself works: the source and the export are found.
    assert _search([source.parent, exported.parent], CANARY)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliRunner, dict[str, str]]:
    """One initialised workspace with dataset "notes" (version 1) for the read-only tests."""
    cli = CliRunner(tmp_path_factory.mktemp("dscli") / "ws")
    env = {"APPLIANCE_PASSPHRASE": PASS}
    data = Path(__file__).resolve().parents[1] / "data" / "datasets" / "valid"
    _ok(cli("init", "--kdf-time", "0", env=env))
    _ok(cli("dataset", "import", str(data / "alpaca.jsonl"), "--name", "notes", env=env))
    return cli, env


def test_wrong_passphrase_is_one_clear_line(shared: tuple[CliRunner, dict[str, str]]) -> None:
    cli, _ = shared
    result = cli("dataset", "show", "notes", env={"APPLIANCE_PASSPHRASE": "not the passphrase"})
    assert result.returncode == 1
    assert result.err_lines == [
        f"error: wrong passphrase for workspace {cli.home}; try again, or ask a person with a "
        "key slot to add one for you (appliance passphrase add)"
    ]


def test_list_needs_no_passphrase(shared: tuple[CliRunner, dict[str, str]]) -> None:
    cli, _ = shared
    result = _ok(cli("dataset", "list", "--json"))
    assert [v["name"] for v in json.loads(result.stdout)] == ["notes"]
    meta = json.loads(_ok(cli("dataset", "show", "notes", "--rows", "0", "--json")).stdout)
    assert meta["rows"] == 3
    assert "preview" not in meta
    no_pass = cli("dataset", "show", "notes")
    assert no_pass.returncode == 1
    assert "use --passphrase-file FILE or set APPLIANCE_PASSPHRASE" in no_pass.err_lines[-1]


def test_damaged_file_names_dataset_and_chunk(
    shared: tuple[CliRunner, dict[str, str]], tmp_path: Path
) -> None:
    cli, env = shared
    version = json.loads(_ok(cli("dataset", "show", "notes", "--rows", "0", "--json")).stdout)
    path = cli.home / version["path"]
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[-3] ^= 0x10
    path.write_bytes(bytes(damaged))
    try:
        result = cli("dataset", "export", "notes", "--out", str(tmp_path / "x.jsonl"), env=env)
    finally:
        path.write_bytes(original)
    assert result.returncode == 1
    assert result.err_lines == [
        "error: dataset notes version 1 is damaged or was modified (chunk 1); restore it from "
        "backup"
    ]
    assert not (tmp_path / "x.jsonl").exists()


def test_import_errors_list_problems_then_one_error_line(
    shared: tuple[CliRunner, dict[str, str]],
) -> None:
    cli, env = shared
    corpus = Path(__file__).resolve().parents[1] / "data" / "datasets" / "malformed"
    result = cli("dataset", "import", str(corpus / "many_errors.jsonl"), "--name", "bad", env=env)
    assert result.returncode == 1
    lines = result.err_lines
    assert lines[0] == "  many_errors.jsonl:2: field 'output': missing"
    assert lines[20] == "  ... and 5 more problems"
    assert lines[21].startswith("error: many_errors.jsonl: 25 invalid rows (first: ")
    assert len(lines) == 22
    usage = cli(
        "dataset",
        "import",
        str(corpus / "bom.jsonl"),
        "--name",
        "bad",
        "--eval-fraction",
        "2",
        env=env,
    )
    assert usage.returncode == 2
    assert "--eval-fraction 2.0 is out of range" in usage.stderr


def test_show_export_delete_flow(shared: tuple[CliRunner, dict[str, str]], tmp_path: Path) -> None:
    cli, env = shared
    data = Path(__file__).resolve().parents[1] / "data" / "datasets" / "valid"
    _ok(cli("dataset", "import", str(data / "text.txt"), "--name", "notes", env=env))
    shown = json.loads(
        _ok(
            cli("dataset", "show", "notes", "--json", "--rows", "1", "--split", "train", env=env)
        ).stdout
    )
    assert shown["version"] == 2
    assert shown["format"] == "text"
    assert len(shown["preview"]) == 1
    assert shown["preview"][0]["split"] == "train"
    target = tmp_path / "notes.jsonl"
    _ok(cli("dataset", "export", "notes@2", "--out", str(target), env=env))
    again = cli("dataset", "export", "notes@2", "--out", str(target), env=env)
    assert again.returncode == 1  # a refused destination is not a usage error
    assert "exists already" in again.stderr
    refused = cli("dataset", "delete", "notes@2", env=env)  # no terminal and no --yes
    assert refused.returncode == 2
    assert "pass --yes" in refused.stderr
    _ok(cli("dataset", "delete", "notes@2", "--yes", env=env))
    gone = cli("dataset", "show", "notes@2", "--rows", "0", env=env)
    assert gone.returncode == 1
    assert "dataset notes@2 was deleted at" in gone.stderr
    assert (
        json.loads(_ok(cli("dataset", "show", "notes", "--rows", "0", "--json")).stdout)["version"]
        == 1
    )
    with Registry.open(open_workspace(cli.home)) as reg:
        actions = [(r["action"], r["object"], r["keyed"]) for r in reg.audit_rows()]
    assert ("dataset.export", "notes@2", True) in actions
    assert ("dataset.delete", "notes@2", True) in actions
    assert actions[0][0] == "vault.create"


def test_export_destinations_are_checked_like_adapter_exports(
    shared: tuple[CliRunner, dict[str, str]], tmp_path: Path
) -> None:
    """Refusals exit 1 with one line, and every file that was there is still there."""
    cli, env = shared
    parent = cli.home.parent
    (tmp_path / "to-parent").symlink_to(parent)
    foreign = tmp_path / "user.jsonl"
    foreign.write_text('{"text": "the user\'s own data"}\n')
    cases = {
        str(parent): f"{parent} contains the workspace {cli.home}",
        str(tmp_path / "to-parent"): "to-parent contains the workspace",
        str(tmp_path / "missing" / "x.jsonl"): f"the folder {tmp_path / 'missing'} does not exist",
        "/sys/x.jsonl": "cannot write",  # read-only even to root
        str(foreign): f"{foreign} exists and is not an unchanged dataset export of this workspace",
    }
    before = sorted(str(p) for p in parent.rglob("*"))
    for dest, message in cases.items():
        result = cli("dataset", "export", "notes", "--out", dest, "--force", env=env)
        assert result.returncode == 1, result.stderr
        assert len(result.err_lines) == 1
        assert message in result.stderr
    assert sorted(str(p) for p in parent.rglob("*")) == before
    assert foreign.read_text() == '{"text": "the user\'s own data"}\n'
    assert not Path("/sys/x.jsonl").exists()


def test_special_files_are_refused_quickly(
    shared: tuple[CliRunner, dict[str, str]], tmp_path: Path
) -> None:
    cli, env = shared
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    for path, kind in [(fifo, "a FIFO (named pipe)"), (zero, "a character device")]:
        result = cli("dataset", "import", str(path), "--name", "special", env=env, timeout=60)
        assert result.returncode == 1
        assert result.err_lines[-1].startswith(f"error: {path} is {kind}")
    # Nothing was imported (the old code read /dev/zero until memory ran out).
    version = json.loads(_ok(cli("dataset", "list", "--json")).stdout)
    assert [v["name"] for v in version] == ["notes"]


def test_unknown_names_and_versions_are_named(shared: tuple[CliRunner, dict[str, str]]) -> None:
    cli, _ = shared
    unknown = cli("dataset", "list", "nope")
    assert unknown.returncode == 1
    assert unknown.err_lines == ["error: no dataset named 'nope' (datasets: notes)"]
    assert "No datasets yet" not in unknown.stdout
    assert cli("dataset", "list", "../etc").returncode == 2
    assert cli("adapter", "list", "nope").err_lines == [
        "error: no adapter named 'nope' (adapters: none yet; adapters come from training runs)"
    ]
    huge = cli("dataset", "show", "notes@99999999999999999999999", "--rows", "0")
    assert huge.returncode == 2
    assert huge.err_lines == [
        "error: invalid dataset reference 'notes@99999999999999999999999': versions are "
        "numbers from 1 to 9223372036854775807"
    ]


def test_a_corrupted_registry_on_import_is_called_damaged(tmp_path: Path) -> None:
    cli = CliRunner(tmp_path / "ws")
    env = {"APPLIANCE_PASSPHRASE": PASS}
    data = Path(__file__).resolve().parents[1] / "data" / "datasets" / "valid"
    _ok(cli("init", "--kdf-time", "0", env=env))
    conn = sqlite3.connect(cli.home / "registry.sqlite")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'audit'").fetchone()
    finally:
        conn.close()
    raw = bytearray((cli.home / "registry.sqlite").read_bytes())
    raw[(page[0] - 1) * page_size] = 0xFF  # no valid b-tree page type: a damaged page
    (cli.home / "registry.sqlite").write_bytes(bytes(raw))
    result = cli("dataset", "import", str(data / "alpaca.jsonl"), "--name", "notes", env=env)
    assert result.returncode == 1
    assert len(result.err_lines) == 1
    assert "is damaged (database disk image is malformed); nothing was written" in result.stderr
    assert "disk space" not in result.stderr
    assert list((cli.home / "datasets").iterdir()) == []  # the encrypted file was removed
