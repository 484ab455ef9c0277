"""Base models: safe import of Hugging Face safetensors folders and GGUF files, and their use.

* :mod:`~appliance.models.safety`: refusal of pickle weights, code, ``auto_map``, and bad
  safetensors headers, before any library opens a file.
* :mod:`~appliance.models.describe`: weights, tokenizer, architecture and the recorded facts.
* :mod:`~appliance.models.importer`: ``import_model`` (staging, copy or link, GGUF conversion).
* :mod:`~appliance.models.use`: ``resolve_model_for_use`` for the trainer and exporter.
"""

from __future__ import annotations

from appliance.models.importer import import_model
from appliance.models.safety import check_safetensors, scan_folder
from appliance.models.use import model_folder, resolve_model_for_use, verify_model_files

__all__ = [
    "check_safetensors",
    "import_model",
    "model_folder",
    "resolve_model_for_use",
    "scan_folder",
    "verify_model_files",
]
