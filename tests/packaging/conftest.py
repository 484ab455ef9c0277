"""Fixtures of the offline-bundle tests: a signing key, a core bundle built once, installers.

The bundle under test is a *core* bundle whose third-party wheels are repacked from the
distributions installed in the test venv (``--wheel-source installed``): no network, no index,
a few seconds to build, yet it exercises every step a full bundle goes through (project wheel,
lock with hashes, SBOM, signature, verifier, installer, pip --require-hashes, self-test).
The full bundle with torch is built by ``bench/bundle_full.sh``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
# packaging/ is not a package (it must not shadow PyPI's `packaging`): put it on the path.
if str(PACKAGING) not in sys.path:
    sys.path.insert(0, str(PACKAGING))

from bundler import build as builder  # noqa: E402
from bundler.wheels import Target  # noqa: E402


@dataclass(frozen=True)
class BuiltBundle:
    """A built bundle and the key that signed it."""

    result: builder.BuildResult
    key: Path
    pubkey: Path

    @property
    def path(self) -> Path:
        return self.result.bundle


def _netns() -> list[str] | None:
    """The command prefix that runs a command with no network (loopback only), if any works."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-rn"], ["unshare", "-n"]):
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return prefix
    return None


def target_python() -> str:
    """A CPython of the bundle's version to install with: the system one when it matches."""
    system = Path("/usr/bin/python3")
    if system.exists():
        probe = subprocess.run(
            [str(system), "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return str(system)
    return sys.executable


@pytest.fixture(scope="session")
def netns() -> list[str]:
    prefix = _netns()
    if prefix is None:
        pytest.skip("unshare -n / -rn is not available here: cannot install without a network")
    return prefix


def build_core_bundle(out: Path, key: Path) -> builder.BuildResult:
    """Build a core bundle from this venv's installed distributions into ``out``."""
    options = builder.BuildOptions(
        out_dir=out,
        profile="core",
        wheel_source="installed",
        target=Target(),
        demo_model=None,
        key_path=key,
        tarball=True,
    )
    return builder.build(options)


@pytest.fixture(scope="session")
def core_bundle(tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    root = tmp_path_factory.mktemp("bundle")
    key = root / "keys" / "bundle-signing.key"
    result = build_core_bundle(root / "out", key)
    return BuiltBundle(result, key, key.with_name("bundle-signing.pub.pem"))


@dataclass(frozen=True)
class InstallRun:
    returncode: int
    stdout: str
    stderr: str
    prefix: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


Installer = Callable[..., InstallRun]


@pytest.fixture
def run_install(netns: list[str], tmp_path: Path) -> Installer:
    """Run a bundle's install.sh inside a network namespace with no network."""

    def run(bundle: Path, pubkey: Path, *extra: str, prefix: Path | None = None) -> InstallRun:
        prefix = prefix or tmp_path / "opt"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "APPLIANCE_"))}
        env["HOME"] = str(tmp_path / "home")
        proc = subprocess.run(
            [
                *netns,
                "bash",
                str(bundle / "install.sh"),
                "--pubkey",
                str(pubkey),
                "--prefix",
                str(prefix),
                "--desktop-dir",
                str(tmp_path / "share"),
                "--python",
                target_python(),
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        return InstallRun(proc.returncode, proc.stdout, proc.stderr, prefix)

    return run
