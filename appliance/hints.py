"""Values checked against dataclass type hints: the one coercer for typed records read from outside.

Three kinds of input become typed values through the annotations of the dataclasses they fill:
event lines of child processes (:mod:`appliance.events`), training configs read back from JSON
(:mod:`appliance.training.config`) and ``--set key=value`` text
(:mod:`appliance.training.settings`). They share the words for what a type accepts
(:func:`expected`) and the checks (:func:`from_json`, :func:`from_text`, :func:`build`); each
caller words the message around a :class:`HintError` (which file, line, event or setting), so
every refusal names the field and what it takes.

Supported hints: ``bool``, ``int``, ``float``, ``str``, ``Any``, ``Literal[...]`` of strings,
``list[X]``, ``dict[...]``, unions (``X | None``, ``str | list[str]``) and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Collection
from typing import Any, Literal, get_args, get_origin

_HINTS: dict[type[Any], dict[str, Any]] = {}

_PLURALS = {str: "strings", int: "whole numbers", float: "numbers", bool: "true or false values"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class HintError(ValueError):
    """A value that does not fit its field's type hint."""

    def __init__(self, name: str, expected: str, value: Any) -> None:
        super().__init__(f"{name} must be {expected}")
        self.name = name
        """The field, as a path: ``lora.rank``, ``gpus[0].index``."""
        self.expected = expected
        """What the field accepts, in words (:func:`expected`)."""
        self.value = value
        """The value as given."""


class MissingFieldError(ValueError):
    """A required field is absent."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the required field {name} is missing")
        self.name = name


class UnknownFieldError(ValueError):
    """A field the dataclass does not have (where unknown fields are refused)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown field {name}")
        self.name = name
        self.known = known
        """The field names the dataclass does have, sorted."""


def type_hints(cls: type[Any]) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, computed once per class.

    Resolving string annotations compiles each of them: about 2 ms for an event class, which a
    desktop window following a run would otherwise pay for every line it reads.
    """
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or get_origin(hint) is typing.Union


def _options(hint: Any) -> list[Any]:
    return [a for a in get_args(hint) if a is not type(None)]


def expected(hint: Any) -> str:
    """What a field of type ``hint`` accepts, in words: "a whole number", "one of a, b"."""
    if _is_union(hint):
        return " or ".join(expected(option) for option in _options(hint))
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(hint))
    if origin is list:
        (item,) = get_args(hint) or (Any,)
        return f"a list of {_PLURALS[item]}" if item in _PLURALS else "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a JSON object"
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in words:
        return words[hint]
    if hint is Any:
        return "any value"
    raise AssertionError(f"no words for {hint!r}")


def from_json(
    value: Any,
    hint: Any,
    name: str,
    *,
    unknown: Literal["ignore", "refuse"] = "ignore",
    nan_from_null: bool = False,
) -> Any:
    """``value``, read from JSON, checked against ``hint`` (ints become floats where asked).

    Args:
        name: the field's path, for messages.
        unknown: what to do with unknown keys of nested dataclasses (see :func:`build`).
        nan_from_null: a plain ``float`` field reads null as NaN (streams that write non-finite
            floats as null: :func:`appliance.events.finite`).

    Raises:
        HintError: the value does not fit (the innermost field that does not).
        MissingFieldError, UnknownFieldError: from a nested dataclass (see :func:`build`).
    """

    def bad() -> typing.NoReturn:
        raise HintError(name, expected(hint), value)

    if _is_union(hint):
        options = _options(hint)
        if value is None and len(options) < len(get_args(hint)):
            return None
        if len(options) == 1:
            return from_json(value, options[0], name, unknown=unknown, nan_from_null=nan_from_null)
        for option in options:
            try:
                return from_json(value, option, name, unknown=unknown, nan_from_null=nan_from_null)
            except HintError:
                continue
        bad()
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in get_args(hint):
            bad()
        return value
    if hint is bool:
        if not isinstance(value, bool):
            bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad()
        return value
    if hint is float:
        if value is None and nan_from_null:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            bad()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            bad()
        return value
    if origin is list:
        if not isinstance(value, list):
            bad()
        (item,) = get_args(hint) or (Any,)
        return [
            from_json(v, item, f"{name}[{i}]", unknown=unknown, nan_from_null=nan_from_null)
            for i, v in enumerate(value)
        ]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            bad()
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            bad()
        target = typing.cast(type[Any], hint)
        return target(
            **build(target, value, f"{name}.", unknown=unknown, nan_from_null=nan_from_null)
        )
    raise AssertionError(f"no check for {hint!r}")


def build(
    cls: type[Any],
    data: dict[str, Any],
    prefix: str = "",
    *,
    unknown: Literal["ignore", "refuse"] = "ignore",
    required: Collection[str] = (),
    nan_from_null: bool = False,
) -> dict[str, Any]:
    """The constructor arguments of dataclass ``cls`` read from the JSON object ``data``.

    A field absent from ``data`` takes its default; one without a default, or named in
    ``required``, must be there.

    Args:
        prefix: put before field names in messages (``"lora."``).
        unknown: ``"ignore"`` keys the class does not have (a newer writer's extra fields) or
            ``"refuse"`` them (a mistyped setting).

    Raises:
        HintError: a value does not fit its field.
        MissingFieldError: a required field is absent.
        UnknownFieldError: an unknown key, with ``unknown="refuse"``.
    """
    specs = [spec for spec in dataclasses.fields(cls) if spec.init]
    if unknown == "refuse":
        known = sorted(spec.name for spec in specs)
        extra = sorted(set(data) - set(known))
        if extra:
            raise UnknownFieldError(prefix + extra[0], known)
    hints = type_hints(cls)
    values: dict[str, Any] = {}
    for spec in specs:
        name = prefix + spec.name
        if spec.name in data:
            hint = hints[spec.name]
            value = data[spec.name]
            values[spec.name] = from_json(
                value, hint, name, unknown=unknown, nan_from_null=nan_from_null
            )
        elif spec.name in required or (
            spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        ):
            raise MissingFieldError(name)
    return values


def from_text(text: str, hint: Any, name: str) -> Any:
    """The value of a field of type ``hint`` typed as text (``--set key=text``, a form field).

    Words for booleans (true/false, yes/no, on/off, 1/0), ``_`` in whole numbers, a choice in any
    case, finite numbers only; ``str | list[str]`` takes a JSON list of strings or the text itself.

    Raises:
        HintError: the text is no value of the type (``value`` is the text).
    """
    raw = text.strip()

    def bad() -> typing.NoReturn:
        raise HintError(name, expected(hint), text)

    if get_origin(hint) is Literal:
        choice = raw.lower()
        if choice not in get_args(hint):
            bad()
        return choice
    if hint is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        bad()
    if hint is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            bad()
    if hint is float:
        try:
            number = float(raw)
        except ValueError:
            bad()
        if not math.isfinite(number):
            bad()
        return number
    if hint is str:
        return raw
    if _is_union(hint) and set(_options(hint)) == {str, list[str]}:
        if not raw.startswith("["):
            return raw
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: "[[[[..."
            bad()
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            bad()
        return parsed
    raise AssertionError(f"no text form for {hint!r}")
