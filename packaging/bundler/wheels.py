"""Wheels for the wheelhouse: the project's own wheel, downloads, and repacks of installed ones.

Two sources of third-party wheels:

* ``download`` (the default, on a connected build machine): ``pip download`` resolves the whole
  dependency closure for the target platform and Python, so the wheels are the published files
  and their hashes are the ones PyPI (or the torch index) serves.
* ``installed``: rebuild wheels from the distributions installed in the running interpreter's
  environment (their RECORD lists every file). No network at all; used by the CI test and for a
  rebuild on a machine that is already offline. The hashes are then those of the repacked files.
"""

from __future__ import annotations

import base64
import csv
import email.parser
import hashlib
import importlib.metadata
import io
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

PROJECT = "finetune-appliance"
# Roots left out of a "core" bundle: the training, export and GUI stack. What remains runs the
# CLI's workspace, vault, registry and self-test verbs.
HEAVY_ROOTS = frozenset(
    canonicalize_name(n)
    for n in (
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "accelerate",
        "safetensors",
        "tokenizers",
        "gguf",
        "PySide6-Essentials",
        "pyqtgraph",
    )
)
# Files an installer writes into a .dist-info folder; they are not part of a wheel.
_INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"})


class BuildError(Exception):
    """The bundle cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class WheelInfo:
    """One wheel in the wheelhouse, with what the lock and the SBOM need to know of it."""

    path: Path
    name: str
    """The distribution name as its metadata spells it."""
    version: str
    sha256: str
    metadata: Message

    @property
    def key(self) -> str:
        """The canonical (PEP 503) name, used for comparisons."""
        return canonicalize_name(self.name)


def run_pip(args: list[str], what: str) -> None:
    """Run ``python -m pip ARGS`` with the build interpreter; a failure becomes a BuildError."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BuildError(f"{what} failed (pip exit {proc.returncode}):\n{tail}")


def build_project_wheel(source: Path, dest: Path) -> Path:
    """Build the project's wheel from the files git knows (tracked or untracked, not ignored).

    The tree is copied first so that a build never writes ``build/`` or ``*.egg-info`` into the
    working checkout, and so that ignored local files (venvs, caches, bundles) never leak in.
    """
    with tempfile.TemporaryDirectory(prefix="appliance-src-") as tmp:
        tree = Path(tmp) / "src"
        for rel in _project_files(source):
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, tree / rel)
        # The build backend (setuptools) comes from the build environment, not from an index.
        run_pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(tree)],
            "building the project's wheel",
        )
    built = sorted(dest.glob("finetune_appliance-*.whl"))
    if len(built) != 1:
        raise BuildError(f"expected one finetune_appliance wheel in {dest}, found {len(built)}")
    return built[0]


def _project_files(source: Path) -> list[str]:
    """The files of the checkout: git's view when there is one, else what the wheel needs."""
    try:
        proc = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=source,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:  # no git on this machine
        proc = None
    if proc is not None and proc.returncode == 0:
        names = filter(None, proc.stdout.decode().split("\0"))
        return [n for n in names if (source / n).is_file()]
    # An exported tree (no .git): the wheel is built from pyproject.toml, README.md and the
    # two packages setuptools is told to find.
    files = [n for n in ("pyproject.toml", "README.md") if (source / n).is_file()]
    for package in ("appliance", "gui"):
        files.extend(
            path.relative_to(source).as_posix()
            for path in sorted((source / package).rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        )
    return files


def read_wheel(path: Path) -> WheelInfo:
    """Hash a wheel and read its METADATA."""
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
    except ValueError as exc:
        raise BuildError(f"{path.name}: not a wheel file name ({exc})") from None
    with zipfile.ZipFile(path) as archive:
        candidates = [
            n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)
        ]
        if len(candidates) != 1:
            raise BuildError(f"{path.name}: no single .dist-info/METADATA inside")
        metadata = email.parser.BytesParser().parsebytes(archive.read(candidates[0]))
    declared = metadata.get("Name", "")
    if canonicalize_name(declared) != name:
        raise BuildError(f"{path.name}: file name and METADATA Name {declared!r} disagree")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return WheelInfo(path, declared, str(version), digest, metadata)


# --- the "installed" source ---------------------------------------------------------------------


def _requirements(dist: importlib.metadata.Distribution) -> list[Requirement]:
    return [Requirement(text) for text in dist.requires or []]


def installed_closure(roots: Iterable[str], exclude: frozenset[str] = frozenset()) -> list[str]:
    """Canonical names of the requirements ``roots`` and all they require, as installed here.

    Markers are evaluated for this interpreter; requirements whose marker is false are skipped.

    Raises:
        BuildError: a required distribution is not installed in this environment.
    """
    env = {k: str(v) for k, v in default_environment().items()}
    todo: list[tuple[str, frozenset[str]]] = []
    for text in roots:
        root = Requirement(text)
        if root.marker is None or root.marker.evaluate(env):
            todo.append((root.name, frozenset(root.extras)))
    done: dict[str, frozenset[str]] = {}
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in exclude or (key in done and extras <= done[key]):
            continue
        done[key] = done.get(key, frozenset()) | extras
        try:
            dist = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            raise BuildError(
                f"{key} is required but not installed in {sys.prefix}; install it or use "
                "--wheel-source download"
            ) from None
        for req in _requirements(dist):
            wanted = ["", *sorted(done[key])]
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
                todo.append((req.name, frozenset(req.extras)))
    return sorted(done)


def _wheel_tags(dist: importlib.metadata.Distribution) -> tuple[str, bool]:
    text = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]
    purelib = "Root-Is-Purelib: true" in text
    if not tags:
        raise BuildError(f"{dist.metadata['Name']}: no WHEEL tags recorded; reinstall it")
    parts = [t.split("-") for t in tags]
    interps, abis, plats = (sorted({p[i] for p in parts}) for i in range(3))
    return f"{'.'.join(interps)}-{'.'.join(abis)}-{'.'.join(plats)}", purelib


def repack_installed(name: str, dest: Path) -> Path:
    """Rebuild the wheel of the installed distribution ``name`` from the files RECORD lists.

    Files installed outside site-packages (console scripts, which pip regenerates from
    ``entry_points.txt``, and ``.data`` scripts or headers) and compiled ``__pycache__`` files
    are left out, as are the installer's own records; RECORD is written anew.
    """
    dist = importlib.metadata.distribution(name)
    if dist.read_text("direct_url.json") and "editable" in (
        dist.read_text("direct_url.json") or ""
    ):
        raise BuildError(f"{name} is an editable install; build its wheel from source instead")
    tag, _ = _wheel_tags(dist)
    stem = f"{canonicalize_name(dist.metadata['Name']).replace('-', '_')}-{dist.version}"
    target = dest / f"{stem}-{tag}.whl"
    base = Path(str(dist.locate_file("")))
    members: list[tuple[str, Path]] = []
    dist_info = ""
    for entry in dist.files or []:
        rel = entry.as_posix()
        parts = rel.split("/")
        if parts[0] == ".." or "__pycache__" in parts or rel.endswith(".pyc"):
            continue
        if parts[0].endswith(".dist-info"):
            dist_info = parts[0]
            if len(parts) == 2 and parts[1] in _INSTALLER_FILES:
                continue
        source = base / rel
        if source.is_file():
            members.append((rel, source))
    if not dist_info:
        raise BuildError(f"{name}: RECORD lists no .dist-info folder; reinstall it")
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for rel, source in sorted(members):
            data = source.read_bytes()
            info = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if source.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([rel, f"sha256={b64}", len(data)])
        writer.writerow([f"{dist_info}/RECORD", "", ""])
        info = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, record.getvalue())
    return target


# --- the "download" source ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The platform the bundle is for (pip download's --platform/--python-version/... flags)."""

    python_version: str = "3.11"
    platforms: tuple[str, ...] = ("manylinux_2_34_x86_64",)
    implementation: str = "cp"

    @property
    def abi(self) -> str:
        return f"{self.implementation}{self.python_version.replace('.', '')}"

    def pip_flags(self) -> list[str]:
        flags = ["--only-binary=:all:", "--python-version", self.python_version]
        flags += ["--implementation", self.implementation, "--abi", self.abi, "--abi", "abi3"]
        flags += ["--abi", "none"]
        for platform in expand_platforms(self.platforms):
            flags += ["--platform", platform]
        return flags


def expand_platforms(platforms: Iterable[str]) -> list[str]:
    """Each ``manylinux_2_Y_arch`` tag and every older glibc tag a system with it also runs.

    ``pip download --platform`` matches tags literally (unlike ``pip install`` on the target,
    which knows its glibc), so a manylinux_2_34 target must list 2_33, ..., 2_17 (also spelt
    manylinux2014), 2_12 (manylinux2010) and 2_5 (manylinux1) itself.
    """
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    out: list[str] = []
    for platform in platforms:
        match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
        if not match:
            out.append(platform)
            continue
        newest, arch = int(match.group(1)), match.group(2)
        for minor in range(newest, 4, -1):
            out.append(f"manylinux_2_{minor}_{arch}")
            if minor in legacy:
                out.append(f"{legacy[minor]}_{arch}")
    return list(dict.fromkeys(out))


def download(
    requirements: list[str],
    dest: Path,
    target: Target,
    *,
    extra_index_urls: Iterable[str] = (),
    no_deps: bool = False,
) -> None:
    """``pip download`` ``requirements`` (and, unless ``no_deps``, their closure) into ``dest``."""
    args = ["download", "--dest", str(dest), "--no-cache-dir", *target.pip_flags()]
    for url in extra_index_urls:
        args += ["--extra-index-url", url]
    if no_deps:
        args.append("--no-deps")
    run_pip([*args, *requirements], f"pip download of {' '.join(requirements)}")


def project_requirements(wheel: WheelInfo, exclude: frozenset[str]) -> list[str]:
    """The project's own Requires-Dist lines, less those naming ``exclude`` (core bundles)."""
    kept = []
    for text in wheel.metadata.get_all("Requires-Dist") or []:
        req = Requirement(text)
        if canonicalize_name(req.name) in exclude or (req.marker and "extra" in str(req.marker)):
            continue
        kept.append(text)
    return kept
