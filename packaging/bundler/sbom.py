"""The CycloneDX 1.5 SBOM and the human-readable licence summary of a bundle."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from bundler.wheels import WheelInfo

# Trove classifiers and common free-text values that map to one SPDX identifier. Anything else is
# reported by name (CycloneDX ``license.name``), never guessed.
_SPDX = {
    "MIT License": "MIT",
    "MIT": "MIT",
    "BSD License": "BSD-3-Clause",
    "BSD": "BSD-3-Clause",
    "BSD-3-Clause": "BSD-3-Clause",
    "BSD-2-Clause": "BSD-2-Clause",
    "Apache Software License": "Apache-2.0",
    "Apache 2.0": "Apache-2.0",
    "Apache 2.0 License": "Apache-2.0",
    "Apache-2.0": "Apache-2.0",
    "Apache License 2.0": "Apache-2.0",
    "Apache License, Version 2.0": "Apache-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "ISC License (ISCL)": "ISC",
    "ISC": "ISC",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "MPL-2.0": "MPL-2.0",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "GNU Library or Lesser General Public License (LGPL)": "LGPL-2.1-or-later",
    "The Unlicense (Unlicense)": "Unlicense",
}


def purl(name: str, version: str) -> str:
    """The package URL of a PyPI distribution (name canonical, ``+`` escaped)."""
    return f"pkg:pypi/{canonicalize_name(name)}@{version.replace('+', '%2B')}"


def licences(metadata: Message) -> list[dict[str, Any]]:
    """CycloneDX ``licenses`` of a wheel: its PEP 639 expression, else classifiers, else text."""
    expression = (metadata.get("License-Expression") or "").strip()
    if expression:
        return [{"expression": expression}]
    found: list[dict[str, Any]] = []
    for classifier in metadata.get_all("Classifier") or []:
        if classifier.startswith("License ::"):
            label = classifier.split("::")[-1].strip()
            if label in ("OSI Approved", "Other/Proprietary License"):
                continue
            found.append(_licence_item(label))
    if found:
        return found
    text = (metadata.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 80:
        return [_licence_item(text)]
    return []


def _licence_item(label: str) -> dict[str, Any]:
    spdx = _SPDX.get(label)
    return {"license": {"id": spdx}} if spdx else {"license": {"name": label}}


def licence_label(metadata: Message) -> str:
    """One short licence string for the summary table."""
    parts = []
    for item in licences(metadata):
        if "expression" in item:
            parts.append(item["expression"])
        else:
            lic = item["license"]
            parts.append(lic.get("id") or lic.get("name"))
    return " AND ".join(dict.fromkeys(parts)) or "unknown (see the licence files in the wheel)"


def _dependencies(wheels: list[WheelInfo]) -> list[dict[str, Any]]:
    refs = {w.key: purl(w.name, w.version) for w in wheels}
    env = {k: str(v) for k, v in default_environment().items()}
    graph = []
    for wheel in wheels:
        needs: set[str] = set()
        for text in wheel.metadata.get_all("Requires-Dist") or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            key = canonicalize_name(req.name)
            if key in refs and (req.marker is None or req.marker.evaluate({**env, "extra": ""})):
                needs.add(refs[key])
        graph.append({"ref": refs[wheel.key], "dependsOn": sorted(needs)})
    return graph


def build_sbom(
    wheels: Iterable[WheelInfo],
    *,
    bundle_name: str,
    bundle_version: str,
    properties: dict[str, str],
    locks: dict[str, str],
) -> dict[str, Any]:
    """A CycloneDX 1.5 BOM of ``wheels``: each a library with version, purl, licences, sha256.

    Args:
        wheels: every wheel the installer installs (and nothing else).
        bundle_name: the bundle's name, as the BOM's subject.
        bundle_version: the appliance version inside.
        properties: build facts recorded in the metadata (target, torch variant, wheel source).
        locks: canonical distribution name to the lock file that installs it.
    """
    items = sorted(wheels, key=lambda w: w.key)
    components = []
    for wheel in items:
        ref = purl(wheel.name, wheel.version)
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": ref,
            "name": wheel.name,
            "version": wheel.version,
            "purl": ref,
            "hashes": [{"alg": "SHA-256", "content": wheel.sha256}],
            "properties": [
                {"name": "appliance:wheel", "value": wheel.path.name},
                {"name": "appliance:lock", "value": locks[wheel.key]},
            ],
        }
        summary = (wheel.metadata.get("Summary") or "").strip()
        if summary:
            component["description"] = summary
        found = licences(wheel.metadata)
        if found:
            component["licenses"] = found
        components.append(component)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {
                "components": [
                    {
                        "type": "application",
                        "name": "packaging/build_bundle.py",
                        "version": bundle_version,
                    }
                ]
            },
            "component": {
                "type": "application",
                "bom-ref": bundle_name,
                "name": bundle_name,
                "version": bundle_version,
            },
            "properties": [{"name": f"appliance:{k}", "value": v} for k, v in properties.items()],
        },
        "components": components,
        "dependencies": _dependencies(items),
    }


def write_sbom(path: Path, bom: dict[str, Any]) -> None:
    """Write the BOM as indented JSON."""
    path.write_text(json.dumps(bom, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def licence_summary(wheels: Iterable[WheelInfo], bundle_name: str) -> str:
    """A Markdown licence summary: counts per licence, then one row per distribution."""
    items = sorted(wheels, key=lambda w: w.key)
    by_licence: dict[str, list[str]] = defaultdict(list)
    for wheel in items:
        by_licence[licence_label(wheel.metadata)].append(wheel.name)
    lines = [
        f"# Licences of {bundle_name}",
        "",
        "Taken from each wheel's metadata (PEP 639 License-Expression, else the trove",
        "classifiers, else the License field). The full texts are inside each wheel's",
        "`.dist-info/` folder and, once installed, in the venv's site-packages.",
        "",
        "| Licence | Distributions |",
        "|---|---|",
    ]
    lines.extend(
        f"| {label} | {len(by_licence[label])}: {', '.join(by_licence[label])} |"
        for label in sorted(by_licence)
    )
    lines += ["", "| Distribution | Version | Licence | sha256 |", "|---|---|---|---|"]
    for wheel in items:
        lines.append(
            f"| {wheel.name} | {wheel.version} | {licence_label(wheel.metadata)} | "
            f"`{wheel.sha256[:16]}...` |"
        )
    return "\n".join(lines) + "\n"
