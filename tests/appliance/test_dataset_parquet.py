"""Parquet import and column mapping: same rules and problems as CSV, rows read batch by batch."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance import datasets, workspace
from appliance.datasets.canonical import content
from appliance.datasets.parquet import ParquetSource
from appliance.datasets.problems import DatasetValidationError
from appliance.errors import DatasetError, UsageError
from appliance.registry import Registry
from appliance.vault import Vault
from tests.helpers.cli import CliRunner

VALID = Path(__file__).resolve().parents[1] / "data" / "datasets" / "valid"
Env = tuple[workspace.Workspace, Vault, Registry]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ws, _ = workspace.init(tmp_path_factory.mktemp("parquet") / "ws")
    vault = Vault.create(ws, "correct horse battery", "alice", target_s=0)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        yield ws, vault, reg


def _csv_columns(path: Path, delimiter: str = ",") -> dict[str, list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter=delimiter))
    return {name: [r[name] for r in rows] for name in rows[0]}


def _write(path: Path, columns: dict[str, list[Any]], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def _assert_nothing_stored(env: Env, name: str) -> None:
    ws, _, reg = env
    assert [v for v in reg.datasets.versions() if v["name"] == name] == []
    assert not [p for p in ws.datasets_dir.rglob("*") if p.is_file() and name in p.name]


@pytest.mark.parametrize(("csv_name", "delimiter"), [("alpaca.csv", ","), ("completion.tsv", "\t")])
def test_same_rows_as_csv_give_the_same_version(
    env: Env, tmp_path: Path, csv_name: str, delimiter: str
) -> None:
    _, vault, reg = env
    source = VALID / csv_name
    parquet = _write(tmp_path / "same.parquet", _csv_columns(source, delimiter))
    from_csv, _ = datasets.import_file(vault, reg, source, f"csv-{csv_name[:5]}")
    from_pq, prepared = datasets.import_file(vault, reg, parquet, f"pq-{csv_name[:5]}")
    assert from_pq["format"] == from_csv["format"]
    assert from_pq["rows"] == from_csv["rows"]
    assert from_pq["sha256"] == from_csv["sha256"]
    assert from_pq["source_name"] == "same.parquet"
    assert [content(r) for r in datasets.load_rows(vault, from_pq)] == prepared.rows


def test_column_mapping_reads_roles_from_other_columns(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    plain = _csv_columns(VALID / "alpaca.csv")
    renamed = {"question": plain["instruction"], "context": plain["input"]}
    renamed["answer"] = plain["output"]
    renamed["output"] = ["decoy"] * len(plain["output"])  # a mapped column wins over it
    path = _write(tmp_path / "renamed.parquet", renamed)
    with pytest.raises(DatasetError, match="cannot tell the format"):
        datasets.import_file(vault, reg, path, "mapped")
    mapping = ["instruction=question", "input=context", "output=answer"]
    mapped, _ = datasets.import_file(vault, reg, path, "mapped", columns=mapping)
    reference, _ = datasets.import_file(vault, reg, VALID / "alpaca.csv", "mapped-ref")
    assert mapped["sha256"] == reference["sha256"]
    # The same mapping on a CSV (the CLI's --map works for every tabular source).
    csv_path = tmp_path / "renamed.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(renamed)
        writer.writerows(zip(*renamed.values(), strict=True))
    from_csv, _ = datasets.import_file(vault, reg, csv_path, "mapped-csv", columns=mapping)
    assert from_csv["sha256"] == reference["sha256"]


def test_mapping_errors_are_one_clear_line(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    path = _write(tmp_path / "qa.parquet", {"q": ["a"], "a": ["b"]})
    with pytest.raises(DatasetError) as info:
        datasets.import_file(vault, reg, path, "maperr", columns=["output=answer"])
    assert str(info.value) == (
        "qa.parquet: --map output=answer: there is no column 'answer' (columns: q, a); nothing "
        "was imported"
    )
    cases = {
        "output": "--map 'output': write ROLE=COLUMN, e.g. --map output=answer",
        "answer=a": "--map answer=a: unknown role 'answer'; the roles are: instruction, input,",
    }
    for item, message in cases.items():
        with pytest.raises(UsageError) as usage:
            datasets.import_file(vault, reg, path, "maperr", columns=[item])
        assert str(usage.value).startswith(message)
    with pytest.raises(UsageError, match="the column 'a' is mapped twice"):
        datasets.import_file(vault, reg, path, "maperr", columns=["prompt=a", "completion=a"])
    with pytest.raises(UsageError, match="plain text file: it has no columns to map"):
        datasets.import_file(vault, reg, VALID / "text.txt", "maperr", columns=["text=x"])
    _assert_nothing_stored(env, "maperr")


def test_bad_rows_are_named_by_row_number(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    path = _write(
        tmp_path / "bad.parquet",
        {
            "question": ["Q1", "Q2", "Q3", None, "Q5", "  "],
            "answer": ["A1", None, "A3", "A4", "A5", "A6"],
            "score": [1, 2, 3, 4, 5, 6],
        },
        row_group_size=2,
    )
    mapping = {"prompt": "question", "completion": "answer"}
    with pytest.raises(DatasetValidationError) as info:
        datasets.import_file(vault, reg, path, "badpq", columns=mapping)
    assert info.value.details() == [
        "bad.parquet:2: field 'answer': missing",
        "bad.parquet:4: field 'question': missing",
        "bad.parquet:6: field 'question': empty prompt",
    ]
    _assert_nothing_stored(env, "badpq")
    version, prepared = datasets.import_file(
        vault, reg, path, "badpq", columns=mapping, skip_invalid=True, eval_fraction=0
    )
    assert version["rows"] == 3
    assert version["skipped_rows"] == 3
    assert [p.line for p in prepared.skipped] == [2, 4, 6]
    assert [r["messages"][0]["content"] for r in prepared.rows] == ["Q1", "Q3", "Q5"]


def test_typed_cells_follow_the_json_rules(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    turns = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "user", "content": "bye"}, {"role": "user", "content": "again"}],
    ]
    native = _write(tmp_path / "native.parquet", {"messages": turns})
    as_text = _write(tmp_path / "text.parquet", {"messages": [json.dumps(t) for t in turns]})
    for path in (native, as_text):
        with pytest.raises(DatasetValidationError) as info:
            datasets.import_file(vault, reg, path, "typed")
        assert info.value.details() == [
            f"{path.name}:2: field 'messages[1].role': two user turns in a row (turns must "
            "alternate user, assistant, ...)"
        ]
    numbers = _write(tmp_path / "numbers.parquet", {"prompt": [1.5], "completion": ["x"]})
    with pytest.raises(DatasetValidationError) as info:
        datasets.import_file(vault, reg, numbers, "typed")
    assert info.value.details() == [
        "numbers.parquet:1: field 'prompt': must be a string, not a number"
    ]
    _assert_nothing_stored(env, "typed")


def test_empty_and_fake_parquet_files(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    fake = tmp_path / "fake.parquet"
    fake.write_text('{"text": "I am JSON"}\n')
    no_rows = _write(tmp_path / "norows.parquet", {"text": pa.array([], pa.string())})
    expected = {
        empty: "empty.parquet: the file is empty; export your data to it first; nothing was "
        "imported",
        no_rows: "norows.parquet: no examples found; nothing was imported",
    }
    for path, message in expected.items():
        with pytest.raises(DatasetError) as info:
            datasets.import_file(vault, reg, path, "nothing", skip_invalid=True)
        assert str(info.value) == message
    with pytest.raises(DatasetError) as info:
        datasets.import_file(vault, reg, fake, "nothing")
    message = str(info.value)
    assert message.startswith("fake.parquet: not a readable Parquet file (")
    assert message.endswith(
        "check that it was saved as Parquet, or give it the extension of its real format; "
        "nothing was imported"
    )
    assert "\n" not in message
    _assert_nothing_stored(env, "nothing")


def test_parquet_without_the_extension_is_recognised(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    path = _write(tmp_path / "export.dat", {"text": ["one document", "another"]})
    version, _ = datasets.import_file(vault, reg, path, "noext")
    assert (version["format"], version["rows"]) == ("text", 2)


def test_rows_are_read_a_batch_at_a_time(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "groups.parquet",
        {"text": [f"doc {i}" for i in range(10)], "other": list(range(10))},
        row_group_size=4,
    )
    src = ParquetSource(path)
    try:
        assert (src.num_rows, src.row_groups, src.fields) == (10, 3, ["text", "other"])
        batches = list(src.batches(["text"], batch_rows=3))
    finally:
        src.close()
    assert len(batches) >= 4
    records = [r for b in batches for r in b.records]
    assert [r.line for r in records] == list(range(1, 11))
    assert records[4].data == {"text": "doc 4"}  # only the columns asked for were read


def test_cli_imports_parquet_with_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "qa.parquet", {"q": ["What?", "Why?"], "a": ["This.", "Because."]})
    cli = CliRunner(tmp_path / "ws")
    env = {"APPLIANCE_PASSPHRASE": "correct horse battery"}
    assert cli("init", "--kdf-time", "0", env=env).returncode == 0
    missing = cli("dataset", "import", str(path), "--name", "qa", "--map", "prompt=q", env=env)
    assert missing.returncode == 1
    assert missing.err_lines[-1].startswith("error: qa.parquet:1: cannot tell the format")
    done = cli(
        "dataset",
        "import",
        str(path),
        "--name",
        "qa",
        "--map",
        "prompt=q",
        "--map",
        "completion=a",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (json.loads(done.stdout)["rows"], json.loads(done.stdout)["format"]) == (2, "completion")
    bad = cli("dataset", "import", str(path), "--name", "qa", "--map", "nonsense", env=env)
    assert bad.returncode == 2
    assert "write ROLE=COLUMN" in bad.err_lines[-1]


def test_decoded_size_is_capped_like_a_text_file(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, vault, reg = env
    # Repeated values compress to almost nothing: caught while reading. Distinct values: caught
    # from the file's metadata before reading.
    repeated = _write(tmp_path / "repeated.parquet", {"text": ["x" * 1000] * 50})
    distinct = _write(tmp_path / "distinct.parquet", {"text": [f"{i} " * 400 for i in range(50)]})
    from appliance.datasets import sources

    monkeypatch.setattr(sources, "MAX_FILE_BYTES", 10_000)
    assert pq.ParquetFile(repeated).metadata.row_group(0).total_byte_size < 10_000
    assert pq.ParquetFile(distinct).metadata.row_group(0).total_byte_size > 10_000
    for path in (repeated, distinct):
        with pytest.raises(DatasetError) as info:
            datasets.import_file(vault, reg, path, "large")
        assert str(info.value).startswith(f"{path} holds over ")
        assert str(info.value).endswith(
            "of data once decoded, over the 9.8 KiB limit of one import; split it into smaller "
            "files (each becomes a version)"
        )
    _assert_nothing_stored(env, "large")
