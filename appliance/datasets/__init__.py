"""Datasets: import files in five formats, validate every row, keep versions encrypted.

Pipeline (all in memory)::

    file --sources--> records --formats--> canonical rows --canonical--> deduplicated, split
         --vault--> workspace/datasets/<object id>.enc  +  registry row (counts, sha256, stats)

Modules: :mod:`.sources` (JSONL, JSON array, CSV/TSV, text; file-level checks),
:mod:`.parquet` (Parquet, a batch of rows at a time), :mod:`.columns` (column -> role mapping),
:mod:`.reading` (the one reading path: open, detect, normalise with progress and cancel),
:mod:`.formats` (alpaca, sharegpt, messages, completion, text -> canonical rows),
:mod:`.canonical` (bytes, duplicates, split, statistics), :mod:`.prepare` (the whole
in-memory pipeline), :mod:`.store` (vault + registry), :mod:`.wizard` (the desktop import
wizard's preview and store), :mod:`.token_stats` (token statistics as numbers) and
:mod:`.token_cache` (their encrypted cache and the ``token-stats`` job's parent side). Measuring
them takes a tokenizer and training's encoding: :mod:`appliance.training.dataset_tokens`.

The store's functions are loaded on first use: the training child decodes rows with
:mod:`.canonical` and must not load the registry (it never touches it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from appliance.datasets.canonical import content
from appliance.datasets.canonical import decode as decode_rows
from appliance.datasets.formats import FORMATS
from appliance.datasets.prepare import Prepared, prepare
from appliance.datasets.problems import DatasetValidationError, Problem

if TYPE_CHECKING:
    from appliance.datasets.store import (
        delete_version,
        export_version,
        import_file,
        load_rows,
        read_plaintext,
        resolve,
        version_label,
    )

_STORE = frozenset(
    (
        "delete_version",
        "version_label",
        "export_version",
        "import_file",
        "load_rows",
        "read_plaintext",
        "resolve",
    )
)


def __getattr__(name: str) -> Any:
    if name in _STORE:
        return getattr(importlib.import_module("appliance.datasets.store"), name)
    raise AttributeError(f"module 'appliance.datasets' has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "DatasetValidationError",
    "Prepared",
    "Problem",
    "content",
    "decode_rows",
    "delete_version",
    "export_version",
    "import_file",
    "load_rows",
    "prepare",
    "read_plaintext",
    "resolve",
    "version_label",
]
