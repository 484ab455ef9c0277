"""The ``appliance`` command frame: verbs, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.cli.context import resolve_passphrase
from appliance.errors import PassphraseError
from tests.helpers.cli import CliRunner

VERBS = [
    *("init", "dataset", "model", "train", "run", "adapter", "export", "gpu"),
    *("passphrase", "verify", "audit", "selftest"),
]


def _assert_one_line_error(result_stderr: str) -> None:
    lines = [line for line in result_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result_stderr


def test_help_lists_every_verb(cli: CliRunner) -> None:
    result = cli("--help")
    assert result.returncode == 0
    for verb in VERBS:
        assert f" {verb} " in result.stdout, verb


def test_unknown_verb_is_a_usage_error(cli: CliRunner) -> None:
    result = cli("frobnicate")
    assert result.returncode == 2
    assert "Usage: appliance" in result.stderr
    assert "No such command" in result.stderr
    assert result.stdout == ""


def test_unknown_flag_is_a_usage_error(cli: CliRunner) -> None:
    result = cli("gpu", "--bogus")
    assert result.returncode == 2
    assert "No such option" in result.stderr


PASS = {"APPLIANCE_PASSPHRASE": "a test passphrase"}


def test_init_creates_and_reports(cli: CliRunner, home: Path) -> None:
    result = cli("init", "--kdf-time", "0", env=PASS)
    assert result.returncode == 0, result.stderr
    assert str(home) in result.stdout
    assert (home / "FORMAT").is_file()
    again = cli("init", env=PASS)
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout


def test_init_without_any_passphrase_creates_nothing(cli: CliRunner, home: Path) -> None:
    result = cli("init")  # no terminal, no file, no environment variable
    assert result.returncode == 1
    _assert_one_line_error(result.stderr)
    assert "no terminal to ask on" in result.stderr
    assert not home.exists()


def test_init_with_an_empty_passphrase_env_creates_nothing(cli: CliRunner, home: Path) -> None:
    result = cli("init", env={"APPLIANCE_PASSPHRASE": ""})
    assert result.returncode == 1
    _assert_one_line_error(result.stderr)
    assert "APPLIANCE_PASSPHRASE is set but empty" in result.stderr
    assert not home.exists()


def test_appliance_home_env_is_used(cli: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "from-env"
    result = cli("init", "--kdf-time", "0", home=False, env={"APPLIANCE_HOME": str(target), **PASS})
    assert result.returncode == 0, result.stderr
    assert (target / "FORMAT").is_file()


@pytest.mark.usefixtures("cli")  # APPLIANCE_HOME unset, so the runner's home is the one used
def test_home_pointing_at_a_file(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = CliRunner(target)("init", env=PASS)
    assert result.returncode == 1
    _assert_one_line_error(result.stderr)
    assert "is a file" in result.stderr
    assert target.read_text() == "keep me"


@pytest.mark.usefixtures("cli")
def test_unwritable_location() -> None:
    # /proc refuses new folders even to root, so this holds wherever the tests run.
    result = CliRunner(Path("/proc/appliance-test-ws"))("init", env=PASS)
    assert result.returncode == 1
    _assert_one_line_error(result.stderr)
    assert "cannot create a workspace" in result.stderr


def test_newer_workspace_is_refused(cli: CliRunner, home: Path) -> None:
    assert cli("init", "--kdf-time", "0", env=PASS).returncode == 0
    (home / "FORMAT").write_text(json.dumps({"format": 999}))
    result = cli("init", env=PASS)
    assert result.returncode == 1
    _assert_one_line_error(result.stderr)
    assert "newer appliance" in result.stderr


def test_gpu_without_nvidia_is_a_clean_state(cli: CliRunner) -> None:
    result = cli("gpu")
    assert result.returncode == 0, result.stderr
    if "No NVIDIA GPU found" not in result.stdout:
        assert result.stdout.startswith("GPU 0:")
    data = json.loads(cli("gpu", "--json").stdout)
    assert set(data) == {"gpus", "driver_version", "unavailable_reason"}


def test_version(cli: CliRunner) -> None:
    result = cli("--version", home=False)
    assert result.returncode == 0
    assert result.stdout.startswith("appliance ")


def test_empty_passphrase_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_PASSPHRASE", "")
    with pytest.raises(PassphraseError, match="APPLIANCE_PASSPHRASE is set but empty"):
        resolve_passphrase(None)


def test_passphrase_sources_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("from file\n")
    monkeypatch.setenv("APPLIANCE_PASSPHRASE", "from env")
    assert resolve_passphrase(secret) == "from file"
    assert resolve_passphrase(None) == "from env"
    monkeypatch.delenv("APPLIANCE_PASSPHRASE")
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115 - closed by pytest
    with pytest.raises(PassphraseError, match="no terminal"):
        resolve_passphrase(None)
    secret.write_text("\n")
    with pytest.raises(PassphraseError, match="is empty"):
        resolve_passphrase(secret)
