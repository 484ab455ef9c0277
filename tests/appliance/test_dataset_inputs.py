"""Input files that are not what they claim: devices, FIFOs, huge files, hostile JSON.

Each must end in a clear refusal (file-level) or a row problem (skippable with
--skip-invalid), never a hang, an exhausted memory, a RecursionError or a UnicodeEncodeError.
``prepare`` is the whole in-memory path of an import up to encryption, so these tests need no
workspace; test_dataset_cli.py runs the same inputs through the real command.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.datasets.prepare import prepare
from appliance.datasets.problems import DatasetValidationError
from appliance.datasets.sources import MAX_FILE_BYTES, MAX_JSON_DEPTH, read_source
from appliance.errors import DatasetError, UsageError

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}


@pytest.fixture(autouse=True)
def never_hang() -> Iterator[None]:
    """A regression that blocks (on a FIFO, on /dev/zero) fails the test instead of the suite."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError("the import blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.symlink_to("/dev/zero"), r"is a character device \(such as /dev/zero\)"),
        (lambda p: p.symlink_to("/dev/urandom"), r"is a character device"),
        (lambda p: p.symlink_to("/dev/null"), r"is a character device"),
        (os.mkfifo, r"is a FIFO \(named pipe\), not a regular file"),
        (lambda p: p.mkdir(), r"is a folder, not a regular file"),
        (lambda p: p.symlink_to(p.parent), r"is a folder, not a regular file"),
    ],
    ids=["dev-zero", "dev-urandom", "dev-null", "fifo", "folder", "symlink-to-folder"],
)
def test_special_files_are_refused_before_reading(
    tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / "data.jsonl"
    make(path)  # type: ignore[operator]
    with pytest.raises(DatasetError, match=message):
        read_source(path)


def test_a_huge_sparse_file_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.truncate(50 * 1024**3)  # 50 GB that cost no disk
    with pytest.raises(DatasetError) as info:
        read_source(path)
    assert str(info.value) == (
        f"{path} is 53,687,091,200 bytes (50.0 GiB), over the 1.0 GiB limit of one import; "
        "split it into smaller files (each becomes a version)"
    )
    assert MAX_FILE_BYTES == 1024**3


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="the file is empty"):
        read_source(empty)
    with pytest.raises(DatasetError, match="no such file"):
        read_source(tmp_path / "missing.jsonl")
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(DatasetError, match="no such file"):
        read_source(dangling)


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_deep_nesting_in_a_jsonl_row_is_a_row_problem(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "deep.jsonl",
        [
            json.dumps(GOOD),
            '{"messages": ' + _nested(100_000) + "}",
            '{"messages": ' + "{" * 30_000,  # unbalanced and deep: still just this row
            json.dumps({**GOOD, "id": 2}),
        ],
    )
    with pytest.raises(DatasetValidationError) as info:
        prepare(path)
    assert info.value.details()[0] == (
        f"deep.jsonl:2: JSON nested 100,001 levels deep, over the limit of {MAX_JSON_DEPTH}; an "
        "example needs only a few"
    )
    assert info.value.details()[1].startswith("deep.jsonl:3: JSON nested 30,001 levels deep")
    kept = prepare(path, skip_invalid=True)
    assert kept.skipped_rows == 2
    assert len(kept.rows) == 1  # the two good rows are duplicates once "id" is dropped


def test_nesting_limit_is_exact_and_ignores_brackets_in_strings(tmp_path: Path) -> None:
    inner = MAX_JSON_DEPTH - 1  # the row object itself is one level
    at_limit = {"text": "x", "extra": json.loads(_nested(inner))}
    over = '{"text": "x", "extra": ' + _nested(inner + 1) + "}"
    brackets_in_text = {"text": "[" * 5000 + "{" * 5000}
    path = _write_jsonl(
        tmp_path / "limit.jsonl", [json.dumps(at_limit), over, json.dumps(brackets_in_text)]
    )
    prepared = prepare(path, skip_invalid=True)
    assert [p.line for p in prepared.skipped] == [2]
    assert prepared.rows == [{"text": "x"}, brackets_in_text]


def test_deep_nesting_in_a_json_array_is_a_row_problem(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(
        "[\n"
        + json.dumps(GOOD)
        + ",\n"
        + _nested(50_000)
        + ",\n"
        + json.dumps({"text": "t"})
        + "\n]\n"
    )
    with pytest.raises(DatasetValidationError) as info:
        prepare(path, fmt="messages")
    assert info.value.details()[0].startswith("deep.json:3: JSON nested 50,000 levels deep")
    kept = prepare(path, fmt="messages", skip_invalid=True)
    assert len(kept.rows) == 1
    assert [p.line for p in kept.skipped] == [3, 4]  # the deep one, and text is not messages
    # Deep and never closed: the file as a whole is broken, said in one line.
    broken = tmp_path / "broken.json"
    broken.write_text("[" + json.dumps(GOOD) + ", " + "[" * 50_000)
    with pytest.raises(DatasetError, match=r"broken\.json:1: invalid JSON: unbalanced brackets"):
        prepare(broken)


def test_deep_nesting_in_a_csv_cell_is_a_row_problem(tmp_path: Path) -> None:
    good = json.dumps(GOOD["messages"]).replace('"', '""')
    path = tmp_path / "chats.csv"
    path.write_text(f'messages\n"{good}"\n"{_nested(5_000)}"\n')
    with pytest.raises(DatasetValidationError) as info:
        prepare(path)
    assert info.value.details() == [
        f"chats.csv:3: field 'messages': in the cell: JSON nested 5,000 levels deep, over the "
        f"limit of {MAX_JSON_DEPTH}; an example needs only a few"
    ]
    assert len(prepare(path, skip_invalid=True).rows) == 1


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ('{"text": "a\\ud800b"}', "text"),
        ('{"text": "\\udfff"}', "text"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "\\ud83d"}]}',
            "messages[1].content",
        ),
        ('{"instruction": "\\ud800", "output": "fine"}', "instruction"),
        (
            '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],'
            ' "system": "\\udc00"}',
            "system",
        ),
    ],
)
def test_a_lone_surrogate_escape_is_a_row_problem(tmp_path: Path, row: str, field: str) -> None:
    fine = '{"text": "a real pair \\ud83d\\ude00 is fine"}'
    fmt = "text" if field == "text" else "auto"
    path = _write_jsonl(tmp_path / "s.jsonl", [row, row.replace("\\u", "u")])
    with pytest.raises(DatasetValidationError) as info:
        prepare(path, fmt=fmt)
    first = info.value.details()[0]
    assert first.startswith(f"s.jsonl:1: field '{field}': not valid Unicode: a lone surrogate")
    assert len(info.value.details()) == 1  # one problem, not also "empty"
    kept = prepare(path, fmt=fmt, skip_invalid=True)
    assert kept.skipped_rows == 1
    assert len(kept.rows) == 1
    assert prepare(_write_jsonl(tmp_path / "ok.jsonl", [fine])).rows == [
        {"text": "a real pair \U0001f600 is fine"}
    ]


def test_surrogates_in_field_names_do_not_break_the_message(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "keys.jsonl", ['{"\\ud800": "x"}'])
    with pytest.raises(DatasetError) as info:
        prepare(path)
    message = str(info.value)
    assert "found: \\ud800" in message
    message.encode("utf-8")  # printable: no lone surrogate left in it


def test_split_seed_must_fit(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "t.jsonl", ['{"text": "a"}'])
    for seed in (-1, 2**32, 10**23):
        with pytest.raises(UsageError, match=r"--seed .* is out of range; give a number from 0"):
            prepare(path, seed=seed)
    assert prepare(path, seed=2**32 - 1).seed == 2**32 - 1


def test_eval_fraction_gives_one_eval_row_from_two_rows_and_none_from_one(tmp_path: Path) -> None:
    one = prepare(_write_jsonl(tmp_path / "one.jsonl", ['{"text": "a"}']))
    assert one.splits == ["train"]  # one eval row would leave nothing to train on
    two = prepare(_write_jsonl(tmp_path / "two.jsonl", ['{"text": "a"}', '{"text": "b"}']))
    assert sorted(two.splits) == ["eval", "train"]
    many = prepare(
        _write_jsonl(tmp_path / "n.jsonl", [json.dumps({"text": str(i)}) for i in range(30)])
    )
    assert many.splits.count("eval") == 3
    none = prepare(tmp_path / "two.jsonl", eval_fraction=0)
    assert none.splits == ["train", "train"]
