"""The import wizard's core: preview without storing, then store with progress and cancel."""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance import datasets, workspace
from appliance.datasets.control import ImportCancelled
from appliance.datasets.problems import DatasetValidationError
from appliance.datasets.wizard import preview_import, store_import
from appliance.errors import DatasetError, UsageError
from appliance.registry import Registry
from appliance.vault import Vault

DATA = Path(__file__).resolve().parents[1] / "data" / "datasets"
VALID = DATA / "valid"
MALFORMED = DATA / "malformed"
Env = tuple[workspace.Workspace, Vault, Registry]

FORMATS = {
    "alpaca.csv": "alpaca",
    "alpaca.jsonl": "alpaca",
    "completion.tsv": "completion",
    "messages.jsonl": "messages",
    "sharegpt.json": "sharegpt",
    "text.jsonl": "text",
    "text.txt": "text",
    "alpaca.parquet": "alpaca",
}

COLUMNS = {
    "alpaca.csv": ["instruction", "input", "output"],
    "alpaca.jsonl": ["instruction", "input", "output", "id", "system"],
    "completion.tsv": ["prompt", "completion"],
    "messages.jsonl": ["messages"],
    "sharegpt.json": ["conversations", "system"],
    "text.jsonl": ["text", "meta"],
    "text.txt": None,
    "alpaca.parquet": ["instruction", "input", "output"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ws, _ = workspace.init(tmp_path_factory.mktemp("wizard") / "ws")
    vault = Vault.create(ws, "correct horse battery", "alice", target_s=0)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        yield ws, vault, reg


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every valid test file, plus the alpaca CSV's rows as Parquet."""
    out = {p.name: p for p in VALID.iterdir()}
    with open(VALID / "alpaca.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    parquet = tmp_path_factory.mktemp("pq") / "alpaca.parquet"
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), parquet)
    out["alpaca.parquet"] = parquet
    return out


def _stored(ws: workspace.Workspace) -> list[Path]:
    folders = ("datasets", "tmp")
    return sorted(p for p in ws.home.rglob("*") if p.is_file() and p.parent.name in folders)


def test_corpus_covers_every_valid_file(files: dict[str, Path]) -> None:
    assert set(files) == set(FORMATS)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_preview_then_store_equals_the_cli_import(
    env: Env, files: dict[str, Path], name: str
) -> None:
    ws, vault, reg = env
    before = _stored(ws)
    preview = preview_import(files[name], eval_fraction=0.3, sample_rows=2)
    assert _stored(ws) == before  # a preview writes nothing
    assert (preview.format, preview.detected) == (FORMATS[name], FORMATS[name])
    assert preview.candidates[0] == FORMATS[name]
    assert preview.problems == []
    assert preview.validation_error() is None
    assert preview.can_store
    reference = datasets.prepare(files[name], eval_fraction=0.3)
    assert [row for _, row in preview.sample] == reference.rows[:2]
    assert preview.valid_rows == len(reference.rows) + reference.duplicates_removed
    assert preview.duplicates == reference.duplicates_removed
    assert (preview.train_rows, preview.eval_rows) == (
        reference.splits.count("train"),
        reference.splits.count("eval"),
    )
    assert preview.columns == COLUMNS[name]
    seen: list[tuple[int, int, str]] = []
    version, _ = store_import(
        vault, reg, preview, f"wiz-{name.replace('.', '-')}", progress=lambda *a: seen.append(a)
    )
    cli_version, _ = datasets.import_file(
        vault, reg, files[name], f"cli-{name.replace('.', '-')}", eval_fraction=0.3
    )
    assert version["sha256"] == cli_version["sha256"] == reference.sha256
    assert seen[-1][2] == "encrypting"
    assert seen[-1][0] == seen[-1][1] > 0


def test_bad_rows_listed_then_skip_or_refuse(env: Env) -> None:
    ws, vault, reg = env
    path = MALFORMED / "many_errors.jsonl"
    preview = preview_import(path)
    with pytest.raises(DatasetValidationError) as cli_error:
        datasets.import_file(vault, reg, path, "many")
    assert [str(p) for p in preview.problems] == [str(p) for p in cli_error.value.problems]
    assert preview.report_lines() == cli_error.value.details()
    assert str(preview.validation_error()) == str(cli_error.value)
    assert (preview.records, preview.valid_rows, preview.invalid_rows) == (26, 1, 25)
    assert preview.problems[0].line == 2
    assert preview.problems[0].field == "output"
    before = _stored(ws)
    with pytest.raises(DatasetValidationError) as refused:
        store_import(vault, reg, preview, "many")
    assert str(refused.value) == str(cli_error.value)
    assert _stored(ws) == before
    version, prepared = store_import(vault, reg, preview, "many", skip_invalid=True)
    assert (version["rows"], version["skipped_rows"]) == (1, 25)
    assert prepared.rows[0]["messages"][0]["content"] == "Summarise the clause"


def test_unknown_format_is_reported_with_the_columns_then_mapped() -> None:
    path = MALFORMED / "no_format.jsonl"
    preview = preview_import(path)
    with pytest.raises(DatasetError) as cli_error:
        datasets.prepare(path)
    assert preview.format is None
    assert not preview.can_store
    assert preview.format_error == str(cli_error.value)
    assert preview.columns == ["question", "answer"]
    assert preview.candidates == []
    mapped = preview_import(path, columns={"prompt": "question", "completion": "answer"})
    assert (mapped.format, mapped.valid_rows, mapped.mapping) == (
        "completion",
        1,
        {"prompt": "question", "completion": "answer"},
    )
    forced = preview_import(VALID / "text.txt", "alpaca")
    assert forced.format_error == (
        "text.txt is a plain text file; it can only be imported with --format text"
    )


def test_file_level_errors_raise_the_cli_message() -> None:
    for name in ("bom.jsonl", "binary.jsonl", "empty.jsonl"):
        with pytest.raises(DatasetError) as cli_error:
            datasets.prepare(MALFORMED / name)
        with pytest.raises(DatasetError) as wizard_error:
            preview_import(MALFORMED / name)
        assert str(wizard_error.value) == str(cli_error.value)
    with pytest.raises(UsageError, match="unknown --format 'csv'"):
        preview_import(VALID / "alpaca.csv", "csv")


def test_cancel_during_the_store_stores_nothing(env: Env, tmp_path: Path) -> None:
    ws, vault, reg = env
    path = tmp_path / "big.jsonl"
    # Over 2 MiB of canonical rows, so encryption goes in several pieces.
    path.write_text("".join(f'{{"text": "document {i} {"x" * 400}"}}\n' for i in range(6000)))
    preview = preview_import(path)
    cancel = threading.Event()

    def progress(done: int, _total: int, stage: str) -> None:
        if stage == "encrypting" and done > 0:
            cancel.set()

    before = _stored(ws)
    rows_before = reg.datasets.versions()
    with pytest.raises(ImportCancelled, match="the import was cancelled; nothing was stored"):
        store_import(vault, reg, preview, "cancelled", progress=progress, cancel=cancel)
    assert _stored(ws) == before
    assert reg.datasets.versions() == rows_before
    # Cancelled while reading: a callable works as the flag too.
    with pytest.raises(ImportCancelled):
        preview_import(path, cancel=lambda: True)
    version, _ = store_import(vault, reg, preview, "cancelled")
    assert version["rows"] == 6000
