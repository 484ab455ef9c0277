"""The one coercer from dataclass type hints: every supported hint, nesting, what errors name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from appliance import hints
from appliance.hints import HintError, MissingFieldError, UnknownFieldError


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str = ""


@dataclass(frozen=True)
class Record:
    count: int
    ratio: float = 0.5
    flag: bool = False
    label: str = ""
    anything: Any = None
    mode: Literal["fast", "slow"] = "fast"
    sizes: list[int] = field(default_factory=list)
    loose: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    maybe: int | None = None
    modules: str | list[str] = "all"
    gpus: list[Gpu] = field(default_factory=list)
    main: Gpu | None = None


@pytest.mark.parametrize(
    ("hint", "words"),
    [
        (bool, "true or false"),
        (int, "a whole number"),
        (float, "a number"),
        (str, "a string"),
        (Any, "any value"),
        (Literal["fast", "slow"], "one of fast, slow"),
        (list[int], "a list of whole numbers"),
        (list[float], "a list of numbers"),
        (list[str], "a list of strings"),
        (list[Gpu], "a list"),
        (dict[str, Any], "a JSON object"),
        (Gpu, "a JSON object"),
        (int | None, "a whole number"),
        (str | list[str], "a string or a list of strings"),
    ],
)
def test_expected_words(hint: Any, words: str) -> None:
    assert hints.expected(hint) == words


@pytest.mark.parametrize(
    ("value", "hint", "result"),
    [
        (True, bool, True),
        (3, int, 3),
        (2, float, 2.0),
        (2.5, float, 2.5),
        ("x", str, "x"),
        ([1, "a"], Any, [1, "a"]),
        ("slow", Literal["fast", "slow"], "slow"),
        ([1, 2], list[int], [1, 2]),
        ([1, 2.5], list[float], [1.0, 2.5]),
        ({"a": [1]}, dict[str, Any], {"a": [1]}),
        (None, int | None, None),
        (4, int | None, 4),
        ("q", str | list[str], "q"),
        (["q", "v"], str | list[str], ["q", "v"]),
        ({"index": 1}, Gpu, Gpu(index=1)),
        ([{"index": 0, "name": "a"}], list[Gpu], [Gpu(0, "a")]),
    ],
)
def test_from_json_accepts(value: Any, hint: Any, result: Any) -> None:
    got = hints.from_json(value, hint, "f")
    assert got == result
    assert type(got) is type(result)


@pytest.mark.parametrize(
    ("value", "hint", "words"),
    [
        (1, bool, "true or false"),
        (True, int, "a whole number"),
        (1.5, int, "a whole number"),
        ("1", int, "a whole number"),
        (False, float, "a number"),
        ("1.5", float, "a number"),
        (None, float, "a number"),
        (3, str, "a string"),
        ("medium", Literal["fast", "slow"], "one of fast, slow"),
        ("FAST", Literal["fast", "slow"], "one of fast, slow"),
        ({"a": 1}, list[int], "a list of whole numbers"),
        ([1], dict[str, Any], "a JSON object"),
        ([1], Gpu, "a JSON object"),
        ("3", int | None, "a whole number"),
        ([1, 2], str | list[str], "a string or a list of strings"),
        (5, str | list[str], "a string or a list of strings"),
    ],
)
def test_from_json_refuses_naming_field_and_type(value: Any, hint: Any, words: str) -> None:
    with pytest.raises(HintError) as info:
        hints.from_json(value, hint, "section.field")
    assert (info.value.name, info.value.expected, info.value.value) == (
        "section.field",
        words,
        value,
    )
    assert str(info.value) == f"section.field must be {words}"


def test_null_reads_as_nan_only_where_asked() -> None:
    assert math.isnan(hints.from_json(None, float, "loss", nan_from_null=True))
    got = hints.from_json([1, None], list[float], "shares", nan_from_null=True)
    assert got[0] == 1.0
    assert math.isnan(got[1])
    # An optional float keeps null as "absent", not NaN.
    assert hints.from_json(None, float | None, "eval_loss", nan_from_null=True) is None


@pytest.mark.parametrize(
    ("value", "hint", "path", "words"),
    [
        ([1, "2"], list[int], "f[1]", "a whole number"),
        ([{"index": 0}, {"index": "1"}], list[Gpu], "f[1].index", "a whole number"),
        ({"index": 0, "name": 7}, Gpu, "f.name", "a string"),
        ({"index": "0"}, Gpu | None, "f.index", "a whole number"),
    ],
)
def test_errors_name_the_innermost_path(value: Any, hint: Any, path: str, words: str) -> None:
    with pytest.raises(HintError) as info:
        hints.from_json(value, hint, "f")
    assert (info.value.name, info.value.expected) == (path, words)


def test_build_reads_a_record_with_nested_dataclasses() -> None:
    data = {
        "count": 2,
        "ratio": 1,
        "mode": "slow",
        "modules": ["q", "v"],
        "gpus": [{"index": 0}, {"index": 1, "name": "b"}],
        "main": {"index": 1},
        "newer_field": "ignored",
    }
    record = Record(**hints.build(Record, data))
    assert record == Record(
        count=2,
        ratio=1.0,
        mode="slow",
        modules=["q", "v"],
        gpus=[Gpu(0), Gpu(1, "b")],
        main=Gpu(1),
    )
    assert isinstance(record.ratio, float)


def test_build_missing_required_field_names_its_path() -> None:
    with pytest.raises(MissingFieldError) as info:
        hints.build(Record, {})
    assert info.value.name == "count"
    with pytest.raises(MissingFieldError) as info:
        hints.build(Record, {"count": 1, "gpus": [{"name": "a"}]})
    assert info.value.name == "gpus[0].index"
    assert str(info.value) == "the required field gpus[0].index is missing"


def test_build_required_makes_a_defaulted_field_mandatory() -> None:
    with pytest.raises(MissingFieldError) as info:
        hints.build(Record, {"count": 1}, required=("ratio",))
    assert info.value.name == "ratio"
    assert hints.build(Record, {"count": 1, "ratio": 2}, required=("ratio",)) == {
        "count": 1,
        "ratio": 2.0,
    }


def test_build_refuses_unknown_fields_where_asked_with_prefix_and_known_names() -> None:
    with pytest.raises(UnknownFieldError) as info:
        hints.build(Record, {"count": 1, "zeta": 1, "alpha": 2}, "rec.", unknown="refuse")
    assert info.value.name == "rec.alpha"  # the first unknown, in order
    assert info.value.known == [
        *("anything", "count", "extra", "flag", "gpus", "label", "loose"),
        *("main", "maybe", "mode", "modules", "ratio", "sizes"),
    ]
    with pytest.raises(UnknownFieldError) as info:
        hints.build(Record, {"count": 1, "main": {"index": 0, "idx": 1}}, unknown="refuse")
    assert (info.value.name, info.value.known) == ("main.idx", ["index", "name"])


@pytest.mark.parametrize(
    ("text", "hint", "result"),
    [
        ("yes", bool, True),
        (" On ", bool, True),
        ("1", bool, True),
        ("false", bool, False),
        ("NO", bool, False),
        ("off", bool, False),
        ("0", bool, False),
        ("1_000", int, 1000),
        (" 42 ", int, 42),
        ("1e-4", float, 1e-4),
        (" padded ", str, "padded"),
        ("SLOW", Literal["fast", "slow"], "slow"),
        ("q,v", str | list[str], "q,v"),
        ('["q", "v"]', str | list[str], ["q", "v"]),
    ],
)
def test_from_text_accepts(text: str, hint: Any, result: Any) -> None:
    got = hints.from_text(text, hint, "f")
    assert got == result
    assert type(got) is type(result)


@pytest.mark.parametrize(
    ("text", "hint", "words"),
    [
        ("maybe", bool, "true or false"),
        ("1.5", int, "a whole number"),
        ("abc", int, "a whole number"),
        ("abc", float, "a number"),
        ("nan", float, "a number"),
        ("inf", float, "a number"),
        ("medium", Literal["fast", "slow"], "one of fast, slow"),
        ("[1, 2]", str | list[str], "a string or a list of strings"),
        ("[q", str | list[str], "a string or a list of strings"),
        ("[" * 100_000, str | list[str], "a string or a list of strings"),
    ],
)
def test_from_text_refuses_with_the_text_as_given(text: str, hint: Any, words: str) -> None:
    with pytest.raises(HintError) as info:
        hints.from_text(text, hint, "lora.rank")
    assert (info.value.name, info.value.expected, info.value.value) == ("lora.rank", words, text)


def test_type_hints_are_resolved_once_per_class() -> None:
    first = hints.type_hints(Gpu)
    assert first == {"index": int, "name": str}
    assert hints.type_hints(Gpu) is first
