"""The end-to-end tests' shared run: SmolLM2 trained once per session on the made-up facts.

Training is the slow part (minutes on CPU), so the training test and the tests that use its
adapter (evaluation, chat) share one run (:func:`tests.helpers.quillmere.train_quillmere`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.quillmere import QuillmereRun, train_quillmere


@pytest.fixture(scope="session")
def quillmere(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> QuillmereRun:
    """The shared run, trained on first use."""
    return train_quillmere(tmp_path_factory.mktemp("quillmere"), smollm2_gguf)


@pytest.fixture
def trained(quillmere: QuillmereRun) -> QuillmereRun:
    """The shared run, refused (not silently reused) when training did not finish."""
    outcome = quillmere.second_outcome
    if outcome is None or outcome.state != "finished":
        pytest.fail(f"the shared SmolLM2 run did not finish: {quillmere.first_outcome}, {outcome}")
    return quillmere
