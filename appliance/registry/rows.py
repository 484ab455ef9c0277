"""The registry's rows as typed records: what the CLI, the pages and the jobs read.

Each table group returns these (JSON columns decoded, booleans as ``bool``, the names of
related rows joined in), so a misspelt key is a type error rather than a ``KeyError`` at run
time. They are plain dicts at run time, so ``--json`` prints them as they are.
"""

from __future__ import annotations

from typing import Any, TypedDict


class BaseModelRow(TypedDict):
    """A base model (``base_models``)."""

    id: int
    name: str
    format: str
    """``hf`` or ``gguf``."""
    source: str
    source_sha256: str | None
    linked: bool
    """The files stay where they were (a link), rather than copied into the workspace."""
    path: str
    """Relative to the workspace home (absolute when linked)."""
    sha256: str
    manifest: dict[str, str]
    """Each file's path (relative to the model folder) to its sha256."""
    architecture: str
    model_type: str | None
    parameters: int
    dtype: str | None
    context_length: int | None
    vocab_size: int | None
    has_chat_template: bool
    total_bytes: int
    created_at: str
    created_by: str
    deleted_at: str | None


class DatasetVersionRow(TypedDict):
    """One version of a dataset (``dataset_versions``).

    Every version the appliance imports has its file, object id, hash and counts (the columns
    allow NULL only because the first schema was written before the import was), so those
    are typed as always present.
    """

    id: int
    name: str
    version: int
    object_id: str
    path: str
    """The encrypted file, relative to the workspace home."""
    sha256: str
    """Of the canonical rows (what trained)."""
    file_sha256: str | None
    """Of the encrypted file."""
    kind: str | None
    format: str | None
    source_name: str | None
    rows: int
    train_rows: int
    eval_rows: int
    duplicates_removed: int | None
    skipped_rows: int | None
    skipped_detail: Any
    chars: int | None
    eval_fraction: float
    seed: int
    stats: dict[str, Any] | None
    created_at: str
    created_by: str
    deleted_at: str | None


class RunRow(TypedDict):
    """A training run (``runs``) with the names of its base model and dataset joined in."""

    id: str
    state: str
    pid: int | None
    base_model_id: int | None
    dataset_version_id: int | None
    config: dict[str, Any]
    seed: int | None
    path: str
    """The run folder, relative to the workspace home (``runs/ID`` unless given)."""
    created_at: str
    created_by: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    failure_reason: str | None
    base_model: str | None
    base_model_sha256: str | None
    dataset: str | None
    dataset_version: int | None
    dataset_sha256: str | None


class AdapterVersionRow(TypedDict):
    """One version of an adapter (``adapter_versions``) with its lineage columns and tags."""

    id: int
    name: str
    version: int
    ref: str
    """``NAME@VERSION``."""
    run_id: str | None
    path: str
    """The version's folder, relative to the workspace home."""
    sha256: str
    metrics: dict[str, Any]
    lib_versions: dict[str, Any]
    created_at: str
    created_by: str
    deleted_at: str | None
    tags: list[str]
    run_state: str | None
    seed: int | None
    base_model: str | None
    base_model_sha256: str | None
    dataset: str | None
    dataset_version: int | None
    dataset_sha256: str | None


class TagRow(TypedDict):
    """A tag of an adapter name and the version it points at."""

    name: str
    tag: str
    version: int
    updated_at: str
    updated_by: str


class TagMove(TypedDict):
    """What setting a tag did."""

    ref: str
    tag: str
    previous: int | None
    """The version the tag pointed at before (None: it is new)."""


class ExportRow(TypedDict):
    """An export of an adapter version (``exports``)."""

    id: int
    adapter_version_id: int
    adapter: str
    """``NAME@VERSION`` of the adapter version."""
    format: str
    path: str
    """Absolute: exports lie outside the workspace."""
    sha256: str
    details: dict[str, Any]
    created_at: str
    created_by: str


class EvaluationRow(TypedDict):
    """Scores of an adapter version on a dataset version (``evaluations``)."""

    id: int
    adapter_version_id: int
    adapter: str
    """``NAME@VERSION`` of the adapter version."""
    adapter_sha256: str
    dataset_version_id: int
    dataset: str
    """``NAME@VERSION`` of the dataset version."""
    dataset_sha256: str
    split: str
    metrics: dict[str, Any]
    base_metrics: dict[str, Any] | None
    settings: dict[str, Any]
    lib_versions: dict[str, Any]
    seconds: float | None
    created_at: str
    created_by: str


class GoldenSetRow(TypedDict):
    """The golden set of an adapter name (``golden_sets``) with its dataset version."""

    name: str
    metric: str
    dataset: str
    """``NAME@VERSION`` of the dataset version."""
    dataset_name: str
    dataset_version: int
    dataset_version_id: int
    sha256: str
    kind: str
    deleted_at: str | None
    """When the dataset version was deleted (then the gate cannot run)."""
    updated_at: str
    updated_by: str


class GoldenSetChange(GoldenSetRow):
    """A golden set just attached, and the one it replaced."""

    previous: str | None
    """``NAME@VERSION`` of the dataset it replaced (None: there was none)."""


class AuditRow(TypedDict):
    """One row of the audit chain."""

    seq: int
    time: str
    user: str
    action: str
    object: str
    details: dict[str, Any]
    keyed: bool
    prev_hash: str
    hash: str


class LineageBaseModel(TypedDict):
    name: str
    sha256: str
    architecture: str
    parameters: int


class LineageDataset(TypedDict):
    name: str
    version: int
    sha256: str
    rows: int
    deleted_at: str | None


class LineageRun(TypedDict):
    id: str
    state: str
    started_at: str | None
    finished_at: str | None


class LineageExport(TypedDict):
    format: str
    path: str
    sha256: str
    created_at: str


class LineageRow(TypedDict):
    """Everything that made an adapter version (:meth:`AdapterVersions.lineage`)."""

    name: str
    version: int
    ref: str
    tags: list[str]
    path: str
    sha256: str
    created_at: str
    created_by: str
    deleted_at: str | None
    metrics: dict[str, Any]
    lib_versions: dict[str, Any]
    run: LineageRun | None
    config: dict[str, Any] | None
    seed: int | None
    base_model: LineageBaseModel | None
    dataset: LineageDataset | None
    exports: list[LineageExport]
