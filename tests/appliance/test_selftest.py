"""``appliance selftest``: every check runs for real; failures are reported, never hidden."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import selftest
from appliance.selftest import CheckResult, SelftestContext, run_selftest
from tests.helpers.cli import CliRunner

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "PySide6")


def test_cli_selftest_passes_here_with_every_group(cli: CliRunner) -> None:
    r = cli("selftest", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True
    assert report["failed"] == 0
    names = {c["name"] for c in report["checks"]}
    for expected in (
        "vault: Argon2id RFC 9106 vector",
        "format: atomic files",
        "format: workspace",
        "format: vault key slot",
        "format: vault object",
        "format: registry",
        "dependency: torch >= 2.6",
        "dependency: cryptography >= 44",
        "nvml",
        "no egress: TCP connect to 8.8.8.8",
        "no egress: DNS lookup",
        "no egress: loopback still allowed",
    ):
        assert expected in names
    assert all(c["status"] == "pass" for c in report["checks"] if "::" not in c["name"])
    text = cli("selftest")
    assert text.returncode == 0
    assert text.stdout.splitlines()[-1].endswith("0 failed, 0 skipped")


def _run_with_extra_check(extra: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child with one more check appended to the list."""
    code = (
        "import appliance.selftest as s\n"
        f"{extra}\n"
        "from appliance.cli import main\n"
        f"main({['selftest', *args]!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )


def test_a_failing_check_exits_1_with_one_error_line() -> None:
    proc = _run_with_extra_check(
        "s.CHECKS.append(('broken', lambda ctx: [s.CheckResult('broken thing', 'fail', 'bad')]))"
    )
    assert proc.returncode == 1
    assert "FAIL  broken thing" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: selftest failed: 1 check(s) failed (broken thing)")


def test_missing_vault_known_answers_is_a_failure_not_a_pass() -> None:
    # sys.modules[name] = None makes `import name` raise ModuleNotFoundError.
    proc = _run_with_extra_check(
        "import sys; sys.modules['appliance.vault.selftest'] = None", "--json"
    )
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    vault = [c for c in report["checks"] if c["name"].startswith("vault")]
    assert vault == [
        {
            "name": "vault: known answers",
            "status": "fail",
            "detail": vault[0]["detail"],
        }
    ]
    assert "absent" in vault[0]["detail"]


def test_raising_or_silent_checks_fail() -> None:
    def boom(_ctx: SelftestContext) -> list[CheckResult]:
        raise RuntimeError("kaput")

    def silent(_ctx: SelftestContext) -> list[CheckResult]:
        return []

    report = run_selftest(checks=[("boom", boom), ("silent", silent)])
    assert not report.ok
    assert [(r.name, r.status) for r in report.results] == [("boom", "fail"), ("silent", "fail")]
    assert "RuntimeError: kaput" in report.results[0].detail
    assert not run_selftest(checks=[]).ok  # nothing checked is not a pass


def test_dependency_versions_core_skips_only_the_training_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        selftest,
        "SECURITY_DEPENDENCIES",
        (
            ("no-such-dist-x", "1.0", "training", False),
            ("no-such-dist-y", "1.0", "vault", True),
            ("pytest", "999", "too old", True),
            ("pytest", "1.0", "new enough", False),
        ),
    )
    core = {r.name: r.status for r in selftest.check_dependencies(SelftestContext(True, tmp_path))}
    assert core == {
        "dependency: no-such-dist-x >= 1.0": "skip",
        "dependency: no-such-dist-y >= 1.0": "fail",
        "dependency: pytest >= 999": "fail",
        "dependency: pytest >= 1.0": "pass",
    }
    full = selftest.check_dependencies(SelftestContext(False, tmp_path))
    assert full[0].status == "fail"


@pytest.mark.parametrize(
    ("version", "expected"),
    [("2.13.0+cpu", (2, 13)), ("2.6", (2, 6)), ("44.0.1", (44, 0, 1)), ("5.0.0rc1", (5,))],
)
def test_release_tuple(version: str, expected: tuple[int, ...]) -> None:
    assert selftest.release_tuple(version) == expected
    assert selftest.release_tuple("2.5.1") < selftest.release_tuple("2.6")


def test_cli_and_selftest_do_not_import_the_training_stack() -> None:
    # A core install (reduced bundle) has no torch: `--version`, `gpu` and `selftest --core`
    # must work there, so neither the CLI nor the self-test may import it.
    code = (
        "import sys, io, contextlib\n"
        "from appliance.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['selftest', '--core'])\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
