"""About: versions and licences from metadata or the bundle's SBOM, without importing anything."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from appliance import about


def test_component_versions_come_from_metadata() -> None:
    versions = dict(about.component_versions())
    assert versions["finetune-appliance"]
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        assert versions[name] == metadata.version(name)
    assert "PySide6-Essentials" in versions or "PySide6" in versions


def test_reading_versions_and_licences_loads_no_heavy_library() -> None:
    code = (
        "import sys; from appliance import about; about.component_versions(); "
        "rows, where = about.licences(); assert rows; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'peft', 'bitsandbytes', 'PySide6')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_licences_of_the_installed_distributions() -> None:
    rows = {d.name.lower(): d for d in about.installed_distributions()}
    assert rows["cryptography"].version == metadata.version("cryptography")
    assert "Apache" in rows["cryptography"].licence or "BSD" in rows["cryptography"].licence
    assert rows["pytest"].licence == "MIT"


def test_the_bundle_sbom_is_preferred_when_installed(tmp_path: Path) -> None:
    venv = tmp_path / "release" / "venv"
    venv.mkdir(parents=True)
    assert about.bundle_sbom_path(venv) is None
    sbom = tmp_path / "release" / about.SBOM_NAME
    sbom.write_text(
        json.dumps(
            {
                "components": [
                    {
                        "name": "torch",
                        "version": "2.13.0",
                        "licenses": [{"expression": "BSD-3-Clause"}],
                    },
                    {"name": "rich", "version": "14", "licenses": [{"license": {"id": "MIT"}}]},
                    {"name": "mystery", "version": "1"},
                ]
            }
        )
    )
    assert about.bundle_sbom_path(venv) == sbom
    rows = about.sbom_distributions(sbom)
    assert [(d.name, d.licence) for d in rows] == [
        ("mystery", "unknown"),
        ("rich", "MIT"),
        ("torch", "BSD-3-Clause"),
    ]
    sbom.write_text("{broken")
    assert about.sbom_distributions(sbom) == []
