"""Conversations kept as dataset rows: the Playground's "save as a test row".

A question asked in the Playground, with the answer the team expects, is the start of a golden
set. :func:`add_conversations` stores conversations as the next version of a dataset (its rows
plus these) or as the first version of a new one, through the same path as an import: the
rows are checked as ``messages`` rows of a file would be, deduplicated, split with the
dataset's split fraction and seed, encrypted and recorded. So the new version is exactly what
``appliance dataset import`` of the previous version's export plus these rows would store, and
nothing is ever written in plaintext. Torch-free (the desktop app calls it on a task).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from appliance.datasets import canonical
from appliance.datasets.formats import kind_of, normalise_rows
from appliance.datasets.prepare import Prepared
from appliance.datasets.problems import DatasetValidationError
from appliance.datasets.sources import Record, Source
from appliance.datasets.store import load_rows, store_prepared
from appliance.errors import DatasetError, NotFoundError
from appliance.registry import Registry
from appliance.registry.refs import check_name
from appliance.registry.rows import DatasetVersionRow
from appliance.vault import Vault

SOURCE_NAME = "playground"
"""The source recorded for a version whose new rows came from a conversation."""
DEFAULT_EVAL_FRACTION = 0.1
DEFAULT_SEED = 42
"""A new dataset's split settings: those of ``appliance dataset import``."""

Conversation = Sequence[dict[str, str]]


def add_conversations(
    vault: Vault,
    reg: Registry,
    name: str,
    conversations: Sequence[Conversation],
    *,
    source_name: str = SOURCE_NAME,
) -> DatasetVersionRow:
    """Store ``conversations`` (``[{role, content}, ...]`` ending with the assistant's reply)
    as rows of dataset ``name``: its next version, or its first.

    Takes the workspace's writer lock; the previous version is read under it, so two savers
    cannot both build on the same version.

    Returns:
        The new version's registry row.

    Raises:
        UsageError: an invalid dataset name.
        DatasetValidationError: a conversation that a ``messages`` file could not hold (an
            empty turn, turns that do not alternate, no final reply...), by number.
        DatasetError: the dataset holds plain-text rows, or every conversation is in it already.
        WorkspaceLockedError: another process is writing to the workspace.
    """
    check_name(name, "dataset name")
    if not conversations:
        raise DatasetError("no conversation to store: ask a question first")
    source = Source(
        file=source_name,
        kind="jsonl",
        records=[Record(n, {"messages": list(c)}) for n, c in enumerate(conversations, 1)],
    )
    numbered, problems = normalise_rows(source, "messages")
    if problems:
        raise DatasetValidationError(
            source_name, problems, "each conversation needs a question and the answer expected"
        )
    with vault.ws.writer("dataset add rows"):
        previous = _latest(reg, name)
        rows: list[dict[str, Any]] = []
        eval_fraction, seed = DEFAULT_EVAL_FRACTION, DEFAULT_SEED
        if previous is not None:
            ref = f"{name}@{previous['version']}"
            if previous["kind"] != "chat":
                raise DatasetError(
                    f"dataset {ref} holds plain-text rows; a conversation can only be added to "
                    "a dataset of conversations: choose another name"
                )
            rows = [canonical.content(r) for r in load_rows(vault, previous)]
            eval_fraction, seed = float(previous["eval_fraction"]), int(previous["seed"])
        kept, encoded, removed = canonical.dedupe([*rows, *(row for _, row in numbered)])
        if len(kept) == len(rows):
            where = f"dataset {name}@{previous['version']}" if previous else f"dataset {name}"
            raise DatasetError(f"{where} holds this conversation already; nothing was stored")
        splits = canonical.split(encoded, eval_fraction, seed)
        plaintext = canonical.encode(encoded, splits)
        del encoded
        prepared = Prepared(
            source_name=source_name,
            format="messages",
            kind=kind_of("messages"),
            rows=kept,
            splits=splits,
            duplicates_removed=removed,
            skipped=[],
            eval_fraction=eval_fraction,
            seed=seed,
            plaintext=plaintext,
            sha256=hashlib.sha256(plaintext).hexdigest(),
        )
        return store_prepared(vault, reg, prepared, name)


def _latest(reg: Registry, name: str) -> DatasetVersionRow | None:
    try:
        return reg.datasets.version(name)
    except NotFoundError:
        return None
