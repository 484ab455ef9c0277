"""The offline bundle: what a build writes, the signing key, tampering, and an install with no
network that ends in a working ``appliance``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from bundler import signing
from bundler.wheels import BuildError
from packaging.utils import canonicalize_name

from tests.packaging.conftest import BuiltBundle, Installer, build_core_bundle


def _copy(bundle: BuiltBundle, tmp_path: Path) -> Path:
    target = tmp_path / bundle.path.name
    shutil.copytree(bundle.path, target, symlinks=True)
    return target


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


# --- what a build writes ------------------------------------------------------------------------


def test_bundle_layout_lock_and_manifest(core_bundle: BuiltBundle) -> None:
    bundle = core_bundle.path
    for name in ("install.sh", "verify_bundle.py", "bundle.json", "requirements.lock",
                 "sbom.cdx.json", "LICENSES.md", "SHA256SUMS", "SHA256SUMS.sig",
                 "share/finetune-appliance.desktop", "share/finetune-appliance.svg"):  # fmt: skip
        assert (bundle / name).is_file(), name
    assert os.access(bundle / "install.sh", os.X_OK)
    wheels = sorted(p.name for p in (bundle / "wheelhouse").iterdir())
    assert any(w.startswith("finetune_appliance-") for w in wheels)
    assert any(w.startswith("pip-") for w in wheels)
    assert not any(w.startswith(("torch-", "transformers-")) for w in wheels)  # core profile

    # Every wheel pinned once, with the hash of that very file.
    entries = {}
    lines = (bundle / "requirements.lock").read_text().split("\n")
    for pin, hash_line in zip(lines[2::2], lines[3::2], strict=False):
        if not pin:
            break
        name, version = pin.removesuffix(" \\").split("==")
        entries[name] = (version, hash_line.strip().removeprefix("--hash=sha256:"))
    assert len(entries) == len(wheels)
    for wheel in core_bundle.result.wheels:
        assert entries[wheel.key] == (wheel.version, wheel.sha256)

    # The manifest names every file but itself and its signature.
    listed = {line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert listed == on_disk - {"SHA256SUMS", "SHA256SUMS.sig"}

    info = json.loads((bundle / "bundle.json").read_text())
    assert info["complete"] is False
    assert info["selftest"] == ["selftest", "--core"]
    assert info["signing_key"] == core_bundle.result.fingerprint
    tar = core_bundle.result.tarball
    assert tar is not None
    with tarfile.open(tar) as archive:
        assert f"{bundle.name}/SHA256SUMS.sig" in archive.getnames()


def test_sbom_is_cyclonedx_with_every_wheel(core_bundle: BuiltBundle) -> None:
    bom = json.loads((core_bundle.path / "sbom.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["specVersion"] == "1.5"
    assert bom["serialNumber"].startswith("urn:uuid:")
    by_name: dict[str, Any] = {canonicalize_name(c["name"]): c for c in bom["components"]}
    assert set(by_name) == {w.key for w in core_bundle.result.wheels}
    for wheel in core_bundle.result.wheels:
        component = by_name[wheel.key]
        assert component["version"] == wheel.version
        assert component["purl"].startswith(f"pkg:pypi/{wheel.key}@")
        assert component["hashes"] == [{"alg": "SHA-256", "content": wheel.sha256}]
    # Licences come from metadata: the project's own and a well-known one must be right.
    assert by_name["finetune-appliance"]["licenses"] == [{"expression": "Apache-2.0"}]
    assert "licenses" in by_name["cryptography"]
    summary = (core_bundle.path / "LICENSES.md").read_text()
    assert "| finetune-appliance | 0.1.0 | Apache-2.0 |" in summary


def test_signing_key_is_private_reused_and_kept_out_of_bundles(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "signing" / "bundle-signing.key"
    key, created = signing.load_or_create_key(path)
    assert created
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert signing.public_key_path(path).read_bytes() == signing.public_pem(key)
    again, created_again = signing.load_or_create_key(path)
    assert not created_again
    assert signing.fingerprint(again) == signing.fingerprint(key)
    path.chmod(0o644)
    with pytest.raises(BuildError, match="readable by other users"):
        signing.load_or_create_key(path)
    with pytest.raises(BuildError, match="must live outside the output folder"):
        build_core_bundle(tmp_path / "out", tmp_path / "out" / "k.key")


# --- tampering stops the installer before anything is installed ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        ("flip a byte in a wheel", "wheelhouse/typer-"),
        ("flip a byte in the lock", "requirements.lock: sha256 differs"),
        ("flip a byte in the manifest", "SHA256SUMS: the signature"),
        ("remove a wheel", "wheelhouse/rich-"),
        ("add a file", "wheelhouse/evil-1.0-py3-none-any.whl: not listed"),
        ("flip a byte in install.sh's verifier", "verify_bundle.py: sha256 differs"),
    ],
)
def test_tampered_bundle_installs_nothing(
    core_bundle: BuiltBundle, run_install: Installer, tmp_path: Path, tamper: str, named: str
) -> None:
    bundle = _copy(core_bundle, tmp_path)
    house = bundle / "wheelhouse"
    if tamper == "flip a byte in a wheel":
        _flip_byte(next(house.glob("typer-*.whl")))
    elif tamper == "flip a byte in the lock":
        _flip_byte(bundle / "requirements.lock", offset=-3)
    elif tamper == "flip a byte in the manifest":
        _flip_byte(bundle / "SHA256SUMS", offset=10)
    elif tamper == "remove a wheel":
        next(house.glob("rich-*.whl")).unlink()
    elif tamper == "add a file":
        (house / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    else:
        # A comment, so the verifier still runs and must then catch its own change.
        with open(bundle / "verify_bundle.py", "a") as handle:
            handle.write("# changed\n")
    result = run_install(bundle, core_bundle.pubkey, "--verifier", str(bundle / "verify_bundle.py"))
    assert result.returncode == 1, result.output
    assert named in result.stderr
    assert "nothing was installed" in result.stderr
    assert not result.prefix.exists()


@pytest.mark.slow
def test_a_key_other_than_the_pinned_one_is_refused(
    core_bundle: BuiltBundle, run_install: Installer, tmp_path: Path
) -> None:
    other = tmp_path / "other.key"
    signing.load_or_create_key(other)
    result = run_install(core_bundle.path, signing.public_key_path(other))
    assert result.returncode == 1
    assert "SHA256SUMS: the signature in SHA256SUMS.sig does not verify" in result.stderr
    assert not result.prefix.exists()
    # The copy of the key inside the bundle is never accepted as the pinned one.
    inside = run_install(core_bundle.path, core_bundle.path / "signing-key.pub.pem")
    assert inside.returncode == 1
    assert "lies inside the bundle" in inside.stderr
    assert not inside.prefix.exists()


# --- the real thing: install with no network ---------------------------------------------------


@pytest.mark.slow
def test_offline_install_selftest_cli_and_sbom(
    core_bundle: BuiltBundle, run_install: Installer, netns: list[str], tmp_path: Path
) -> None:
    repo_verifier = Path(__file__).resolve().parents[2] / "packaging" / "verify_bundle.py"
    result = run_install(core_bundle.path, core_bundle.pubkey, "--verifier", str(repo_verifier))
    assert result.returncode == 0, result.output
    assert "bundle verified" in result.stdout
    assert "0 failed" in result.stdout  # the installer ran `appliance selftest --core`
    prefix = result.prefix
    current = prefix / "current"
    assert current.is_symlink()
    assert not (current / ".incomplete").exists()
    appliance = prefix / "bin" / "appliance"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path / "home"),
            "APPLIANCE_PASSPHRASE": "correct horse battery staple",
        }
        return subprocess.run(
            [*netns, str(appliance), *args], capture_output=True, text=True, env=env, check=False
        )

    version = run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "appliance 0.1.0"
    gpu = run("gpu", "--json")
    assert gpu.returncode == 0, gpu.stderr
    assert "gpus" in json.loads(gpu.stdout)
    selftest = run("selftest", "--core", "--json")
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    report = json.loads(selftest.stdout)
    assert report["ok"]
    assert report["failed"] == 0
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["vault: Argon2id RFC 9106 vector"] == "pass"
    assert statuses["no egress: TCP connect to 8.8.8.8"] == "pass"
    assert statuses["dependency: torch >= 2.6"] == "skip"  # honest: a core install has no torch
    # Without --core the missing training stack is a failure, not a silent pass.
    full = run("selftest")
    assert full.returncode == 1
    assert "dependency: torch >= 2.6" in full.stderr

    # A short workflow of the core verbs (workspace, vault, datasets, registry, audit). If this
    # breaks because a verb now imports torch & co. at module level, import it lazily instead:
    # a core install has no training stack.
    home = str(tmp_path / "ws")
    init = run("--home", home, "init")
    assert init.returncode == 0, init.stderr
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    imported = run("--home", home, "dataset", "import", str(data), "--name", "demo")
    assert imported.returncode == 0, imported.stderr
    listed_ds = run("--home", home, "dataset", "list", "--json")
    assert listed_ds.returncode == 0, listed_ds.stderr
    assert [(d["name"], d["rows"]) for d in json.loads(listed_ds.stdout)] == [("demo", 4)]
    audit = run("--home", home, "audit")
    assert audit.returncode == 0, audit.stderr

    # The SBOM lists exactly the distributions that ended up installed.
    listing = subprocess.run(
        [str(current / "venv" / "bin" / "python"), "-c",
         "import importlib.metadata as m, json; "
         "print(json.dumps(sorted([d.metadata['Name'], d.version] for d in m.distributions())))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    installed = {(canonicalize_name(n), v) for n, v in json.loads(listing.stdout)}
    bom = json.loads((current / "sbom.cdx.json").read_text())
    listed = {(canonicalize_name(c["name"]), c["version"]) for c in bom["components"]}
    assert installed == listed

    desktop = (tmp_path / "share" / "applications" / "finetune-appliance.desktop").read_text()
    assert f"Exec={prefix}/bin/appliance-gui\n" in desktop
    assert (tmp_path / "share" / "icons" / "hicolor" / "scalable" / "apps").is_dir()


@pytest.mark.slow
def test_failure_after_pip_leaves_no_half_installed_release(
    core_bundle: BuiltBundle, run_install: Installer, tmp_path: Path
) -> None:
    first = run_install(core_bundle.path, core_bundle.pubkey)
    assert first.returncode == 0, first.output
    before = os.readlink(first.prefix / "current")
    # A correctly signed bundle whose self-test step fails (an unknown option): everything up
    # to and including pip succeeds, then the installer must roll the new release back.
    bundle = _copy(core_bundle, tmp_path)
    info = json.loads((bundle / "bundle.json").read_text())
    info["selftest"] = ["selftest", "--no-such-option"]
    (bundle / "bundle.json").write_text(json.dumps(info))
    key, _ = signing.load_or_create_key(core_bundle.key)
    signing.sign_bundle(bundle, key)
    second = run_install(bundle, core_bundle.pubkey, prefix=first.prefix)
    assert second.returncode == 1
    assert "the self-test of the new install failed" in second.stderr
    assert "removed the partial" in second.stderr
    assert os.readlink(first.prefix / "current") == before
    assert [p.name for p in (first.prefix / "releases").iterdir()] == [Path(before).name]
