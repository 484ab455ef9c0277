"""Export an adapter version for local serving, verified against the unmerged model.

* :mod:`~appliance.export.options`: the request (:class:`ExportOptions`) and its checks.
* :mod:`~appliance.export.merge`: unquantised base + adapter, merge, merged and PEFT folders.
* :mod:`~appliance.export.shards`: a streaming safetensors writer (one copy of the model).
* :mod:`~appliance.export.gguf_writer`: llama-family GGUF with the ``gguf`` package.
* :mod:`~appliance.export.modelfile`: the Ollama Modelfile and its chat-template translation.
* :mod:`~appliance.export.verify`: logits and greedy tokens against the unmerged adapter.
* :mod:`~appliance.export.card`: ``MANIFEST`` and the model card.
* :mod:`~appliance.export.pipeline`: :func:`export_adapter`, the whole export.
* :mod:`~appliance.export.preflight`: destination, expected size and free space, without torch.
* :mod:`~appliance.export.job`: the ``export`` job kind (the same export in a child process).
* :mod:`~appliance.export.serving`: what was written, and the commands that serve it.

The destination is checked by :mod:`appliance.destinations` (shared with ``dataset export``
and the desktop app's export pages): ``force`` replaces only an earlier export.

Typical use::

    options = ExportOptions.checked("gguf", "/srv/models/legal", gguf_type="q8_0")
    result = export_adapter(vault, reg, "legal@3", options, progress=print, cancel=event)
"""

from __future__ import annotations

from appliance.export.options import (
    DTYPES,
    FORMATS,
    GGUF_TYPES,
    ExportCancelledError,
    ExportOptions,
    Progress,
    VerificationFailedError,
    parse_size,
)
from appliance.export.pipeline import ExportResult, export_adapter

__all__ = [
    "DTYPES",
    "FORMATS",
    "GGUF_TYPES",
    "ExportCancelledError",
    "ExportOptions",
    "ExportResult",
    "Progress",
    "VerificationFailedError",
    "export_adapter",
    "parse_size",
]
