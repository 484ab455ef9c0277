"""Addressing training settings by key: ``--set key=value`` parsing, presets, help for each setting.

Settings are addressed as ``section.field`` (``lora.rank``) or, since every field name is unique,
by the bare field name (``rank``); ``lr`` is a short alias for ``optim.learning_rate``. Values are
coerced to the field's type, and a bad key or value is refused with the key and the values it
accepts. The result is always a whole :class:`TrainConfig`, checked by its ``__post_init__``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import types
from dataclasses import dataclass
from functools import cache
from typing import Any, get_args

from appliance import hints
from appliance.training import config as _config
from appliance.training.config import ALL_LINEAR, ConfigError, TrainConfig

ALIASES = {"lr": "optim.learning_rate"}
"""Short names accepted by ``--set`` besides ``section.field`` and bare field names."""


def setting_keys() -> dict[str, Any]:
    """Every settable key (``section.field`` or top-level field) mapped to its type annotation."""
    return dict(_setting_keys())


@cache
def _setting_keys() -> dict[str, Any]:
    # Resolving the annotations compiles each one: worth doing once, not at every keystroke of
    # the desktop app's settings form.
    keys: dict[str, Any] = {}
    for top in dataclasses.fields(TrainConfig):
        hint = hints.type_hints(TrainConfig)[top.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            for sub, sub_hint in hints.type_hints(hint).items():
                keys[f"{top.name}.{sub}"] = sub_hint
        else:
            keys[top.name] = hint
    return keys


def resolve_key(key: str) -> str:
    """The full ``section.field`` for a key given on the command line.

    Raises:
        ConfigError: the key names no setting; the message lists the known ones.
    """
    keys = setting_keys()
    key = key.strip()
    full = ALIASES.get(key, key)
    if full in keys:
        return full
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == full]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(
        f"unknown training setting {key!r}; known settings: {', '.join(sorted(keys))}"
    )


_KEYLIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")


def setting_named(message: str) -> str | None:
    """The setting a refusal is about: the first setting key its message names, else None.

    Every refusal of :mod:`appliance.training.config` and of :func:`coerce_value` names the
    setting to change first (``lora.rank is 0; ...``), so a form can show the message beside that
    setting's field.
    """
    keys = setting_keys()
    for match in _KEYLIKE.finditer(message):
        if match.group() in keys:
            return match.group()
    return None


def describe_allowed(hint: Any) -> str:
    """Human text for the values a field accepts, used in error messages and help."""
    if _is_str_or_list(hint):  # target_modules: say what the text means, not just its type
        return f"{ALL_LINEAR}, a comma list such as q,v, or a JSON list of module names"
    return hints.expected(hint)


def coerce_value(key: str, text: str) -> Any:
    """Turn the text of ``--set key=text`` into the field's type.

    Raises:
        ConfigError: naming the key and the values it accepts.
    """
    full = resolve_key(key)
    hint = setting_keys()[full]
    try:
        return hints.from_text(text, hint, full)
    except hints.HintError:
        shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text):,} characters)"
        raise ConfigError(f"setting {full} must be {describe_allowed(hint)}; got {shown}") from None


def _is_str_or_list(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and str in get_args(hint)


def apply_overrides(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """A new config with ``key=value`` assignments applied (``--set``), checked as a whole.

    Raises:
        ConfigError: a malformed assignment, an unknown key, a bad value or a bad combination.
    """
    data = config.to_dict()
    given = set()
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set takes key=value (e.g. --set lora.rank=32); got {assignment!r}"
            )
        full = resolve_key(key)
        value = coerce_value(full, text)
        section, _, name = full.rpartition(".")
        (data[section] if section else data)[name] = value
        given.add(full)
    # Warm-up is given one way or the other: choosing steps switches the ratio off and back,
    # unless both were given, which the config then refuses with a message.
    for chosen, other in _WARMUP_PAIR:
        if chosen in given and other not in given and data["optim"][chosen.split(".")[1]]:
            data["optim"][other.split(".")[1]] = 0
    return TrainConfig.from_dict(data)


_WARMUP_PAIR = (
    ("optim.warmup_steps", "optim.warmup_ratio"),
    ("optim.warmup_ratio", "optim.warmup_steps"),
)


# --- presets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named starting point for a config."""

    name: str
    summary: str
    """One line for the user: what the preset is for."""
    overrides: tuple[str, ...]
    """``key=value`` assignments over the defaults."""

    def config(self) -> TrainConfig:
        return apply_overrides(TrainConfig(), list(self.overrides))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "quick-test",
            "30 short steps on q,v with rank 8: checks data and settings end to end in minutes; "
            "not a model to keep.",
            (
                "rank=8",
                "alpha=16",
                "target_modules=q,v",
                "max_steps=30",
                "micro_batch_size=2",
                "gradient_accumulation_steps=1",
                "max_seq_length=512",
                "warmup_ratio=0",
                "eval_every=10",
                "save_every=10",
                "keep_last=2",
            ),
        ),
        Preset(
            "balanced",
            "Rank 16 on all linear layers for one epoch: a good first real run (the defaults).",
            (),
        ),
        Preset(
            "thorough",
            "Rank 64 on all linear layers, 3 epochs at a lower rate and 2048 tokens: "
            "more capacity and time for larger datasets.",
            (
                "rank=64",
                "alpha=128",
                "epochs=3",
                "lr=1e-4",
                "max_seq_length=2048",
                "eval_every=100",
                "save_every=200",
            ),
        ),
    )
}


def preset(name: str) -> TrainConfig:
    """The config of a preset by name.

    Raises:
        ConfigError: naming the presets that exist.
    """
    try:
        return PRESETS[name].config()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def build_config(
    preset_name: str = "balanced", assignments: list[str] | None = None
) -> TrainConfig:
    """A preset with ``--set`` assignments on top: what ``appliance train`` uses."""
    return apply_overrides(preset(preset_name), list(assignments or []))


@dataclass(frozen=True)
class SettingInfo:
    """One setting as the CLI's help and the GUI's form show it."""

    key: str
    """``section.field`` or a top-level field name."""
    allowed: str
    """The values it accepts, in words."""
    default: Any
    """Its value in the default (balanced) config."""
    help: str
    """The field's docstring, on one line."""


def settings_help() -> list[SettingInfo]:
    """Every setting with its allowed values, default and documentation, in declaration order."""
    docs = _field_docs()
    defaults = TrainConfig().to_dict()
    infos = []
    for key, hint in setting_keys().items():
        section, _, name = key.rpartition(".")
        default = (defaults[section] if section else defaults)[name]
        owner = _owner(section)
        infos.append(SettingInfo(key, describe_allowed(hint), default, docs.get((owner, name), "")))
    return infos


def _owner(section: str) -> str:
    if not section:
        return TrainConfig.__name__
    hint = hints.type_hints(TrainConfig)[section]
    return str(hint.__name__)


@cache
def _field_docs() -> dict[tuple[str, str], str]:
    """(class, field) -> docstring, read from the config module's source.

    Attribute docstrings are not kept at run time; the source is. Without it (a build that ships
    only bytecode) the help is empty rather than wrong.
    """
    try:
        tree = ast.parse(inspect.getsource(_config))
    except (OSError, TypeError):
        return {}
    docs: dict[tuple[str, str], str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt, following in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[(node.name, stmt.target.id)] = " ".join(following.value.value.split())
    return docs
