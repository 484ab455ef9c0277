"""What is installed: versions of the main components and licences of every distribution.

Everything is read from the installed distributions' metadata (``importlib.metadata``) or from
the SBOM an offline bundle installs beside its venv, never by importing the packages: asking
torch for its version would load torch (seconds, and never in the desktop process). No network.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance import __version__

COMPONENTS = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "PySide6-Essentials")
"""The distributions whose versions the About box names, after the appliance itself."""
SBOM_NAME = "sbom.cdx.json"
"""The CycloneDX SBOM that ``packaging/install.sh`` copies next to the release's venv."""
_SHORT_LICENCE = 80


@dataclass(frozen=True)
class Installed:
    """One installed distribution."""

    name: str
    version: str
    licence: str
    """A short licence string (SPDX expression, classifier or the License field); "unknown"."""


def version_of(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def component_versions() -> list[tuple[str, str]]:
    """``(name, version)`` for the appliance and :data:`COMPONENTS` ("not installed" if absent).

    PySide6 may be installed as the full ``PySide6`` distribution instead of the essentials.
    """
    found = [("finetune-appliance", __version__)]
    for name in COMPONENTS:
        version = version_of(name)
        if version is None and name == "PySide6-Essentials":
            name, version = "PySide6", version_of("PySide6")
        found.append((name, version or "not installed"))
    return found


def licence_label(meta: Message | Any) -> str:
    """A distribution's licence in a few words: PEP 639 expression, else trove classifiers,
    else a one-line License field, else "unknown"."""
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return str(expression)
    labels = []
    for classifier in meta.get_all("Classifier") or []:
        if classifier.startswith("License ::"):
            label = classifier.split("::")[-1].strip()
            if label not in ("OSI Approved", "Other/Proprietary License"):
                labels.append(label)
    if labels:
        return " AND ".join(dict.fromkeys(labels))
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= _SHORT_LICENCE:
        return str(text)
    return "unknown"


def installed_distributions(dists: Iterable[Any] | None = None) -> list[Installed]:
    """Every distribution installed in this Python environment, sorted by name."""
    found: dict[str, Installed] = {}
    for dist in metadata.distributions() if dists is None else dists:
        meta: Any = dist.metadata
        name = meta.get("Name")
        if not name:
            continue
        key = name.lower().replace("_", "-")
        found.setdefault(key, Installed(name, dist.version, licence_label(meta)))
    return sorted(found.values(), key=lambda d: d.name.lower())


def bundle_sbom_path(prefix: Path | None = None) -> Path | None:
    """The SBOM of the offline bundle this venv was installed from, if there is one."""
    venv = Path(sys.prefix if prefix is None else prefix)
    path = venv.parent / SBOM_NAME
    return path if path.is_file() else None


def sbom_distributions(path: Path) -> list[Installed]:
    """The components of a CycloneDX SBOM as :class:`Installed` rows (empty when unreadable)."""
    try:
        bom = json.loads(path.read_text(encoding="utf-8"))
        components = bom["components"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    out = []
    for comp in components if isinstance(components, list) else []:
        if not isinstance(comp, dict) or not comp.get("name"):
            continue
        parts = []
        for item in comp.get("licenses") or []:
            if not isinstance(item, dict):
                continue
            if "expression" in item:
                parts.append(str(item["expression"]))
            elif isinstance(item.get("license"), dict):
                lic = item["license"]
                parts.append(str(lic.get("id") or lic.get("name") or ""))
        label = " AND ".join(p for p in dict.fromkeys(parts) if p) or "unknown"
        out.append(Installed(str(comp["name"]), str(comp.get("version", "")), label))
    return sorted(out, key=lambda d: d.name.lower())


def licences() -> tuple[list[Installed], str]:
    """The installed distributions with their licences, and where they were read from.

    The bundle's SBOM (what the installer verified and installed) when there is one, else
    this environment's metadata.
    """
    sbom = bundle_sbom_path()
    if sbom is not None:
        rows = sbom_distributions(sbom)
        if rows:
            return rows, f"the bundle's SBOM ({sbom})"
    return installed_distributions(), f"the installed packages' metadata ({sys.prefix})"
