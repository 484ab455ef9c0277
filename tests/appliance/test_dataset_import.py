"""Dataset import in process: the malformed corpus, round trips, versions, split, storage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import datasets, workspace
from appliance.datasets.canonical import content, row_bytes, split, with_split
from appliance.datasets.problems import DatasetValidationError
from appliance.datasets.sources import MAX_ROW_BYTES
from appliance.errors import DatasetError, DestinationError, IntegrityError, UsageError
from appliance.registry import Registry
from appliance.vault import Vault

DATA = Path(__file__).resolve().parents[1] / "data" / "datasets"
MALFORMED = DATA / "malformed"
VALID = DATA / "valid"

Env = tuple[workspace.Workspace, Vault, Registry]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One workspace with a vault and an open registry for the whole module."""
    ws, _ = workspace.init(tmp_path_factory.mktemp("datasets") / "ws")
    vault = Vault.create(ws, "correct horse battery", "alice", target_s=0)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        yield ws, vault, reg


# file -> (line, field or None, the problem as the user reads it)
ROW_PROBLEMS: dict[str, tuple[int, str | None, str]] = {
    "bad_json.jsonl": (3, None, "invalid JSON: Expecting ',' delimiter (column 33)"),
    "wrong_type.jsonl": (2, "instruction", "must be a string, not a number"),
    "missing_field.jsonl": (2, "output", "missing"),
    "not_an_object.jsonl": (2, None, "expected a JSON object, found an array"),
    "unknown_role.jsonl": (
        2,
        "messages[1].role",
        "unknown role (expected system, user or assistant)",
    ),
    "missing_role.jsonl": (2, "messages[1].role", "missing role"),
    "empty_assistant.jsonl": (2, "messages[1].content", "empty assistant turn"),
    "ends_with_user.jsonl": (
        2,
        "messages",
        "the conversation does not end with an assistant turn",
    ),
    "two_user_turns.jsonl": (
        2,
        "messages[1].role",
        "two user turns in a row (turns must alternate user, assistant, ...)",
    ),
    "system_not_first.jsonl": (2, "messages[1].role", "a system message may only come first"),
    "content_not_string.jsonl": (2, "messages[0].content", "must be a string, not an array"),
    "sharegpt_unknown_from.jsonl": (
        2,
        "conversations[1].from",
        "unknown role (expected system, user or assistant)",
    ),
    "non_utf8.jsonl": (
        2,
        None,
        "not valid UTF-8 (byte 0xE9 at column 20); save the file as UTF-8",
    ),
    "cell_count.csv": (3, None, "1 cell, but the header has 2"),
    "empty_text.jsonl": (2, "text", "empty text"),
}

# file -> the whole one-line message (file-level problems: never skippable)
FILE_PROBLEMS: dict[str, str] = {
    "bom.jsonl": "bom.jsonl:1: starts with a UTF-8 byte order mark (BOM); save it as UTF-8 "
    "without BOM; nothing was imported",
    "utf16.jsonl": "utf16.jsonl:1: is UTF-16 encoded (it starts with a BOM); save it as UTF-8; "
    "nothing was imported",
    "binary.jsonl": "binary.jsonl:2: binary content (a NUL byte); this is not a text file; "
    "nothing was imported",
    "compressed.jsonl": "compressed.jsonl:1: binary content: this is gzip-compressed; "
    "decompress it first; nothing was imported",
    "empty.jsonl": "empty.jsonl: the file is empty; export your data to it first; nothing was "
    "imported",
    "blank.jsonl": "blank.jsonl: the file is empty; export your data to it first; nothing was "
    "imported",
    "broken_array.json": "broken_array.json:4: invalid JSON: Expecting ',' delimiter (column 3); "
    "nothing was imported",
    "not_an_array.json": "not_an_array.json:1: expected a JSON array of examples "
    "([{...}, {...}]); nothing was imported",
    "bad_quoting.csv": "bad_quoting.csv:2: broken CSV (unexpected end of data); check the "
    "quoting; nothing was imported",
    "no_format.jsonl": "no_format.jsonl:1: cannot tell the format from its fields (found: "
    "answer, question); pass --format alpaca|sharegpt|messages|completion|text, or rename the "
    "fields",
    "unknown_extension.dat": "unknown_extension.dat: cannot tell the file type from '.dat'; "
    "name it .jsonl, .json, .csv, .tsv or .txt",
}


def test_corpus_is_complete() -> None:
    on_disk = {p.name for p in MALFORMED.iterdir()}
    assert on_disk == set(ROW_PROBLEMS) | set(FILE_PROBLEMS) | {"many_errors.jsonl"}


def _assert_nothing_written(env: Env) -> None:
    ws, _, reg = env
    # Deleted versions (of other tests in this module) keep only their metadata file.
    deleted = {
        Path(v["path"]).name.removesuffix(".enc") + ".meta.json"
        for v in reg.datasets.versions(include_deleted=True)
    }
    assert [p.name for p in ws.datasets_dir.iterdir() if p.name not in deleted] == []
    assert reg.datasets.versions() == []


@pytest.mark.parametrize("name", sorted(ROW_PROBLEMS))
def test_row_problem_is_named_precisely(env: Env, name: str) -> None:
    _, vault, reg = env
    line, field, problem = ROW_PROBLEMS[name]
    with pytest.raises(DatasetValidationError) as info:
        datasets.import_file(vault, reg, MALFORMED / name, "bad")
    where = f"{name}:{line}: " + (f"field '{field}': " if field else "")
    assert info.value.details() == [where + problem]
    assert str(info.value) == (
        f"{name}: 1 invalid row (first: {where}{problem}); nothing was imported; fix them, or "
        "pass --skip-invalid to import the valid rows only"
    )
    _assert_nothing_written(env)


@pytest.mark.parametrize("name", sorted(FILE_PROBLEMS))
def test_file_problem_is_named_precisely(env: Env, name: str) -> None:
    _, vault, reg = env
    for skip in (False, True):  # --skip-invalid does not help with a broken file
        with pytest.raises(DatasetError) as info:
            datasets.import_file(vault, reg, MALFORMED / name, "bad", skip_invalid=skip)
        assert str(info.value) == FILE_PROBLEMS[name]
        assert "\n" not in str(info.value)
    _assert_nothing_written(env)


def test_line_over_the_size_limit(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    path = tmp_path / "long.jsonl"
    long = json.dumps({"text": "x" * MAX_ROW_BYTES})
    path.write_text('{"text": "fine"}\n' + long + "\n")
    with pytest.raises(DatasetValidationError) as info:
        datasets.import_file(vault, reg, path, "bad")
    assert info.value.details() == [
        f"long.jsonl:2: line of {len(long):,} bytes, over the 1 MiB limit"
    ]
    _assert_nothing_written(env)


def test_first_twenty_problems_shown_and_the_rest_counted(env: Env) -> None:
    _, vault, reg = env
    with pytest.raises(DatasetValidationError) as info:
        datasets.import_file(vault, reg, MALFORMED / "many_errors.jsonl", "bad")
    details = info.value.details()
    assert len(details) == 21
    assert details[0] == "many_errors.jsonl:2: field 'output': missing"
    assert details[19] == "many_errors.jsonl:21: field 'output': missing"
    assert details[20] == "... and 5 more problems"
    assert str(info.value).startswith("many_errors.jsonl: 25 invalid rows (first: ")
    _assert_nothing_written(env)


def test_skip_invalid_records_what_was_skipped_without_plaintext(env: Env, tmp_path: Path) -> None:
    ws, vault, reg = env
    secret = "SKIPPED-SECRET-31f9"
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        )
        + "\n"
        + json.dumps({"messages": [{"role": secret, "content": secret}]})
        + "\n{broken "
        + secret
        + "\n"
    )
    version, prepared = datasets.import_file(vault, reg, path, "mixed", skip_invalid=True)
    try:
        assert version["rows"] == 1
        assert version["skipped_rows"] == 2
        assert version["skipped_detail"] == [
            {
                "line": 2,
                "field": "messages[0].role",
                "problem": "unknown role (expected system, user or assistant)",
            },
            {
                "line": 3,
                "field": None,
                "problem": "invalid JSON: Expecting property name "
                "enclosed in double quotes (column 2)",
            },
        ]
        assert secret not in json.dumps(version)
        assert secret.encode() not in ws.registry_path.read_bytes()
        assert prepared.skipped_rows == 2
    finally:
        datasets.delete_version(vault, reg, version)


def test_nothing_valid_left(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    path = tmp_path / "allbad.jsonl"
    path.write_text('{"text": 1}\n{"text": ""}\n')
    with pytest.raises(DatasetValidationError, match="no valid row is left to import"):
        datasets.import_file(vault, reg, path, "bad", skip_invalid=True)
    _assert_nothing_written(env)


def _msgs(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


CLAUSE = "Summarise the clause.\n\nThe supplier is not liable for indirect loss."
EXPECTED: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "alpaca.jsonl": (
        "alpaca",
        [
            _msgs(("user", CLAUSE), ("assistant", "No liability for indirect loss.")),
            _msgs(("user", "Translate to French: thank you"), ("assistant", "merci")),
            _msgs(
                ("system", "You are a legal clerk."),
                ("user", "Name the court."),
                ("assistant", "The High Court."),
            ),
        ],
    ),
    "alpaca.csv": (
        "alpaca",
        [
            _msgs(
                ("user", "Summarise the clause.\n\nThe supplier is not liable\nfor indirect loss."),
                ("assistant", "No liability for indirect loss."),
            ),
            _msgs(("user", 'Quote "this"'), ("assistant", "Done, quoted.")),
        ],
    ),
    "sharegpt.json": (
        "sharegpt",
        [
            _msgs(
                ("system", "Be terse."), ("user", "Dose of drug X?"), ("assistant", "10 mg daily.")
            ),
            _msgs(
                ("system", "Answer in German."),
                ("user", "Hello"),
                ("assistant", "Hallo"),
                ("user", "Bye"),
                ("assistant", "Tschüss"),
            ),
        ],
    ),
    "messages.jsonl": (
        "messages",
        [
            _msgs(
                ("system", "You review contracts."),
                ("user", "Is clause 4 enforceable?"),
                ("assistant", "Probably, with caveats."),
            ),
            _msgs(("user", "日本語で答えて"), ("assistant", "はい、わかりました。")),
        ],
    ),
    "completion.tsv": (
        "completion",
        [
            _msgs(("user", "The patient presents with"), ("assistant", "fever and cough.")),
            _msgs(("user", "Invoice total:"), ("assistant", "€1,200.00")),
        ],
    ),
    "text.jsonl": (
        "text",
        [{"text": "First document.\nSecond line."}, {"text": "Second document."}],
    ),
    "text.txt": (
        "text",
        [
            {"text": "Article 1. Scope.\nThis agreement covers services."},
            {"text": "Article 2. Term.\nTwo years."},
            {"text": "Article 3. Law."},
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_round_trip_for_every_format(env: Env, tmp_path: Path, name: str) -> None:
    ws, vault, reg = env
    fmt, expected = EXPECTED[name]
    version, _ = datasets.import_file(vault, reg, VALID / name, f"rt-{fmt}", eval_fraction=0.3)
    try:
        assert version["format"] == fmt
        assert version["kind"] == ("text" if fmt == "text" else "chat")
        out = tmp_path / "export.jsonl"
        datasets.export_version(vault, reg, version, out)
        raw = out.read_bytes()
        assert hashlib.sha256(raw).hexdigest() == version["sha256"]
        rows = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
        assert [content(r) for r in rows] == expected
        assert [r["split"] for r in rows].count("eval") == version["eval_rows"] >= 1
        # The export is itself importable and gives the very same version content.
        again, _ = datasets.import_file(vault, reg, out, f"rt-{fmt}", eval_fraction=0.3)
        assert again["version"] == version["version"] + 1
        assert again["sha256"] == version["sha256"]
        datasets.delete_version(vault, reg, again)
        audit = reg.audit_rows(action="dataset.export")[-1]
        assert audit["object"] == f"rt-{fmt}@{version['version']}"
        assert audit["details"]["out"] == str(out)
    finally:
        datasets.delete_version(vault, reg, version)
    assert not (ws.home / version["path"]).exists()


def test_versions_duplicates_and_split(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    path = tmp_path / "rows.jsonl"
    rows = [{"text": f"document number {i}"} for i in range(200)]
    lines = [json.dumps(r) for r in rows] + [json.dumps(rows[3]), json.dumps(rows[7])]
    path.write_text("\n".join(lines) + "\n")
    v1, _ = datasets.import_file(vault, reg, path, "split", eval_fraction=0.1, seed=1)
    v2, _ = datasets.import_file(vault, reg, path, "split", eval_fraction=0.1, seed=1)
    v3, _ = datasets.import_file(vault, reg, path, "split", eval_fraction=0.1, seed=2)
    try:
        assert [v1["version"], v2["version"], v3["version"]] == [1, 2, 3]
        assert v1["rows"] == 200
        assert v1["duplicates_removed"] == 2
        assert (v1["train_rows"], v1["eval_rows"]) == (180, 20)
        assert v1["sha256"] == v2["sha256"]  # same seed, same split
        assert v3["sha256"] != v1["sha256"]  # another seed, another split
        loaded = datasets.load_rows(vault, v1)
        assert [content(r) for r in loaded] == rows
        # The split is frozen in the stored rows and independent of row order.
        stored = [r["split"] for r in loaded]
        encoded = [row_bytes(r) for r in rows]
        assert stored == split(encoded, 0.1, 1)
        assert list(reversed(split(encoded[::-1], 0.1, 1))) == stored
        assert all(row_bytes(r) == with_split(row_bytes(content(r)), r["split"]) for r in loaded)
        assert reg.datasets.version("split")["version"] == 3
    finally:
        for v in (v1, v2, v3):
            datasets.delete_version(vault, reg, v)


def test_failed_registry_write_leaves_no_file(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _, vault, reg = env

    def refuse(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk full")

    monkeypatch.setattr(reg.datasets, "add_version", refuse)
    with pytest.raises(RuntimeError, match="disk full"):
        datasets.import_file(vault, reg, VALID / "text.txt", "fails")
    _assert_nothing_written(env)


def test_damaged_version_is_named_with_its_chunk(env: Env, tmp_path: Path) -> None:
    ws, vault, reg = env
    path = tmp_path / "big.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"row {i} " + "y" * 500}) + "\n" for i in range(600))
    )
    version, _ = datasets.import_file(vault, reg, path, "legal-qa")
    try:
        enc = ws.home / version["path"]
        original = enc.read_bytes()
        damaged = bytearray(original)
        damaged[131 + 2 * (65536 + 16) + 40] ^= 0x04
        enc.write_bytes(bytes(damaged))
        with pytest.raises(IntegrityError) as info:
            datasets.load_rows(vault, version)
        assert str(info.value) == (
            "dataset legal-qa version 1 is damaged or was modified (chunk 3); restore it from "
            "backup"
        )
        with pytest.raises(IntegrityError, match="damaged"):
            datasets.export_version(vault, reg, version, tmp_path / "never.jsonl")
        assert not (tmp_path / "never.jsonl").exists()
        enc.write_bytes(original)
        assert len(datasets.load_rows(vault, version)) == 600
        # A registry row that does not describe the file is caught too.
        with pytest.raises(IntegrityError, match="does not match its registry record"):
            datasets.load_rows(vault, {**version, "sha256": "0" * 64})
    finally:
        datasets.delete_version(vault, reg, version)


def test_options_are_checked(env: Env) -> None:
    _, vault, reg = env
    with pytest.raises(UsageError, match=r"--eval-fraction 0\.9 is out of range"):
        datasets.import_file(vault, reg, VALID / "text.txt", "x", eval_fraction=0.9)
    with pytest.raises(UsageError, match="unknown --format 'yaml'"):
        datasets.import_file(vault, reg, VALID / "text.txt", "x", fmt="yaml")
    with pytest.raises(UsageError, match="plain text file; it can only be imported with"):
        datasets.import_file(vault, reg, VALID / "text.txt", "x", fmt="alpaca")
    with pytest.raises(UsageError, match="invalid dataset name"):
        datasets.import_file(vault, reg, VALID / "text.txt", "no spaces please")
    with pytest.raises(DatasetValidationError) as info:
        datasets.import_file(vault, reg, VALID / "alpaca.jsonl", "x", fmt="text")
    assert info.value.details()[0] == "alpaca.jsonl:1: field 'text': missing"
    _assert_nothing_written(env)


def test_export_refuses_the_workspace_and_replaces_only_its_own_files(
    env: Env, tmp_path: Path
) -> None:
    ws, vault, reg = env
    version, _ = datasets.import_file(vault, reg, VALID / "text.txt", "exp")
    try:
        with pytest.raises(DestinationError, match="inside the workspace"):
            datasets.export_version(vault, reg, version, ws.tmp_dir / "plain.jsonl")
        existing = tmp_path / "there.jsonl"
        existing.write_text("keep")
        with pytest.raises(DestinationError, match="exists already"):
            datasets.export_version(vault, reg, version, existing)
        with pytest.raises(DestinationError, match="is not an unchanged dataset export of this"):
            datasets.export_version(vault, reg, version, existing, force=True)
        assert existing.read_text() == "keep"
        mine = tmp_path / "mine.jsonl"
        assert datasets.export_version(vault, reg, version, mine) == mine
        datasets.export_version(vault, reg, version, mine, force=True)  # an earlier export
        assert mine.read_bytes().count(b"\n") == 3
        with mine.open("a") as handle:
            handle.write("a line the user added\n")
        with pytest.raises(DestinationError, match="is not an unchanged dataset export"):
            datasets.export_version(vault, reg, version, mine, force=True)
        assert mine.read_bytes().count(b"\n") == 4
    finally:
        datasets.delete_version(vault, reg, version)


def test_csv_cells_holding_conversations(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    path = tmp_path / "chats.csv"
    good = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    path.write_text(
        "messages,source\n"
        f'"{good.replace(chr(34), chr(34) * 2)}",crm\n'
        '"[{""role"": ""user"", ""content"": ""Hi""",crm\n'
        "not json at all,crm\n"
    )
    with pytest.raises(DatasetValidationError) as info:
        datasets.import_file(vault, reg, path, "chats")
    assert info.value.details() == [
        "chats.csv:3: field 'messages': invalid JSON in the cell: Expecting ',' delimiter "
        "(column 34)",
        "chats.csv:4: field 'messages': must be an array of turns, not a string",
    ]
    version, _ = datasets.import_file(vault, reg, path, "chats", skip_invalid=True)
    try:
        assert [content(r) for r in datasets.load_rows(vault, version)] == [
            _msgs(("user", "Hi"), ("assistant", "Yo"))
        ]
        assert version["format"] == "messages"
    finally:
        datasets.delete_version(vault, reg, version)


def test_text_file_that_is_not_utf8(env: Env, tmp_path: Path) -> None:
    _, vault, reg = env
    path = tmp_path / "notes.txt"
    path.write_bytes("First line.\n\nCaf\u00e9 au lait.\n".encode("latin-1"))
    with pytest.raises(DatasetError) as info:
        datasets.import_file(vault, reg, path, "notes", skip_invalid=True)
    assert str(info.value) == (
        "notes.txt:3: not valid UTF-8 (byte 0xE9 at column 4); save the file as UTF-8; nothing "
        "was imported"
    )
    _assert_nothing_written(env)
