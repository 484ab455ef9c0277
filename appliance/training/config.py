"""Training configuration: dataclasses with a docstring per field, presets, ``--set`` overrides.

A :class:`TrainConfig` is checked as a whole when it is built (``__post_init__``), so an object
that exists is valid; every refusal says which setting to change and to what. The config is
written to the run folder as JSON (``config.json``) and read back with :func:`load_config`; the
GUI binds its form to the same fields.

Settings are addressed as ``section.field`` (``lora.rank``) or, since every field name is
unique, by the bare field name (``rank``); ``lr`` is a short alias for ``optim.learning_rate``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from appliance.errors import TrainingError, UsageError
from appliance.fsutil import atomic_write_bytes

CONFIG_SCHEMA = 1
"""Version of the JSON layout written by :func:`save_config`."""

Method = Literal["qlora", "lora"]
Scheduler = Literal["linear", "cosine", "constant"]
OverLength = Literal["truncate", "drop"]
LossOn = Literal["assistant", "all"]
ComputeDtype = Literal["auto", "bf16", "fp16", "fp32"]

ALL_LINEAR = "all-linear"
"""peft's shorthand for every linear layer of the decoder except the LM head."""

SHORT_MODULE_NAMES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
"""``q,v`` is shorthand for ``q_proj,v_proj`` (the names of LLaMA-style decoders)."""

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class ConfigError(UsageError):
    """A training setting is missing, malformed or contradicts another one (exit code 2)."""


def _fail(message: str) -> typing.NoReturn:
    raise ConfigError(f"invalid training config: {message}")


@dataclass
class LoraSettings:
    """The adapter: which layers get LoRA matrices and how large they are."""

    rank: int = 16
    """LoRA rank r: inner size of each adapter pair; larger learns more and costs more memory."""
    alpha: float = 32.0
    """LoRA alpha: the adapter's output is scaled by alpha / rank; 2 x rank is a common choice."""
    dropout: float = 0.05
    """Dropout on the adapter's input during training, 0 to below 1."""
    target_modules: str | list[str] = ALL_LINEAR
    """Layers that get an adapter: ``all-linear``, a comma list such as ``q,v``, or a JSON list of
    module names (``q_proj``...). Short names q, k, v, o, gate, up, down are expanded."""

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 1024:
            _fail(f"lora.rank is {self.rank}; set it between 1 and 1024 (8 to 64 is usual)")
        if not 0 < self.alpha <= 4096:
            _fail(f"lora.alpha is {self.alpha}; set it above 0, e.g. 2 x rank = {2 * self.rank}")
        if not 0 <= self.dropout < 1:
            _fail(f"lora.dropout is {self.dropout}; set it from 0 to below 1 (0.05 is usual)")
        self.target_modules = normalise_target_modules(self.target_modules)


def normalise_target_modules(value: str | list[str]) -> str | list[str]:
    """Return ``"all-linear"`` or a sorted, de-duplicated list of full module names.

    Raises:
        ConfigError: an empty selection or a name that cannot be a module name.
    """
    if isinstance(value, str):
        if value.strip().lower() == ALL_LINEAR:
            return ALL_LINEAR
        items = [part.strip() for part in value.split(",")]
    else:
        items = [str(part).strip() for part in value]
    items = [item for item in items if item]
    if not items:
        _fail("lora.target_modules is empty; use all-linear, q,v or a list of module names")
    if any(item.lower() == ALL_LINEAR for item in items):
        if len(items) > 1:
            _fail("lora.target_modules mixes all-linear with names; use one or the other")
        return ALL_LINEAR
    names = []
    for item in items:
        name = SHORT_MODULE_NAMES.get(item.lower(), item)
        if not _MODULE_NAME.match(name):
            _fail(f"lora.target_modules has {item!r}, which is not a module name (e.g. q_proj)")
        names.append(name)
    return sorted(set(names))


@dataclass
class OptimSettings:
    """AdamW and the learning-rate schedule."""

    learning_rate: float = 2e-4
    """Peak learning rate of AdamW (1e-4 to 3e-4 is usual for LoRA)."""
    scheduler: Scheduler = "cosine"
    """How the rate moves after warm-up: linear (to 0), cosine (to 0) or constant."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0; use this or warmup_ratio, not both."""
    warmup_ratio: float = 0.03
    """Warm-up as a fraction of all optimizer steps (0 to 0.5); use this or warmup_steps."""
    weight_decay: float = 0.0
    """AdamW weight decay on the adapter's weights."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm; 0 turns clipping off."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate < 1):
            _fail(f"optim.learning_rate is {self.learning_rate}; set it between 0 and 1, e.g. 2e-4")
        if self.warmup_steps < 0:
            _fail(f"optim.warmup_steps is {self.warmup_steps}; set it to 0 or more")
        if not 0 <= self.warmup_ratio <= 0.5:
            _fail(f"optim.warmup_ratio is {self.warmup_ratio}; set it from 0 to 0.5")
        if self.warmup_steps > 0 and self.warmup_ratio > 0:
            _fail(
                "optim.warmup_steps and optim.warmup_ratio are both set; "
                "set one of them to 0 (e.g. --set warmup_ratio=0)"
            )
        if not 0 <= self.weight_decay < 1:
            _fail(f"optim.weight_decay is {self.weight_decay}; set it from 0 to below 1")
        if not self.max_grad_norm >= 0:
            _fail(f"optim.max_grad_norm is {self.max_grad_norm}; set it to 0 (off) or more")

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up length in optimizer steps for a run of ``total_steps``."""
        if self.warmup_steps:
            return min(self.warmup_steps, total_steps)
        return round(self.warmup_ratio * total_steps)


@dataclass
class DataSettings:
    """How conversations become training sequences."""

    max_seq_length: int = 1024
    """Longest sequence in tokens; longer conversations follow over_length."""
    over_length: OverLength = "truncate"
    """What to do with a conversation longer than max_seq_length: truncate it or drop it
    (either way the count is reported when training starts)."""
    loss_on: LossOn = "assistant"
    """Which tokens the loss is computed on: the assistant's replies only, or all tokens."""

    def __post_init__(self) -> None:
        if not 16 <= self.max_seq_length <= 1_048_576:
            _fail(f"data.max_seq_length is {self.max_seq_length}; set it from 16 to 1048576")


@dataclass
class ScheduleSettings:
    """How long to train, in what batches, and when to evaluate and save."""

    epochs: float = 1.0
    """Passes over the training split; ignored when max_steps is above 0."""
    max_steps: int = 0
    """Optimizer steps to run; 0 means run the epochs instead."""
    micro_batch_size: int = 4
    """Sequences per forward pass: the main lever on activation memory."""
    gradient_accumulation_steps: int = 4
    """Micro-batches summed per optimizer step (effective batch = micro-batch x this)."""
    eval_every: int = 50
    """Evaluate on the held-out split every N optimizer steps (0: only at the end)."""
    save_every: int = 100
    """Save a resumable checkpoint every N optimizer steps (0: only on stop and at the end)."""
    keep_last: int = 3
    """How many of the newest checkpoints to keep; older ones are deleted."""

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            _fail(f"schedule.max_steps is {self.max_steps}; set it to 0 (use epochs) or more")
        if self.max_steps == 0 and not (math.isfinite(self.epochs) and 0 < self.epochs <= 1000):
            _fail(
                f"schedule.epochs is {self.epochs} and max_steps is 0; "
                "set epochs above 0 (e.g. 1) or max_steps above 0"
            )
        if not 1 <= self.micro_batch_size <= 4096:
            _fail(f"schedule.micro_batch_size is {self.micro_batch_size}; set it from 1 to 4096")
        if not 1 <= self.gradient_accumulation_steps <= 4096:
            _fail(
                f"schedule.gradient_accumulation_steps is {self.gradient_accumulation_steps}; "
                "set it from 1 to 4096"
            )
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                _fail(f"schedule.{name} is {getattr(self, name)}; set it to 0 (off) or more")
        if self.keep_last < 1:
            _fail(f"schedule.keep_last is {self.keep_last}; keep at least 1 checkpoint to resume")

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step."""
        return self.micro_batch_size * self.gradient_accumulation_steps


@dataclass
class TrainConfig:
    """Everything that decides what a training run does, apart from the model and the data."""

    method: Method = "qlora"
    """qlora: 4-bit NF4 base with double quantisation + LoRA; lora: LoRA on a 16/32-bit base."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The adapter's shape."""
    optim: OptimSettings = field(default_factory=OptimSettings)
    """Optimizer and learning-rate schedule."""
    data: DataSettings = field(default_factory=DataSettings)
    """Sequence length and loss masking."""
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    """Run length, batching, evaluation and checkpoints."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: much less memory for about 30% more time."""
    seed: int = 42
    """Seed for adapter initialisation, shuffling and dropout; equal seeds give equal runs."""
    compute_dtype: ComputeDtype = "auto"
    """Arithmetic precision: auto picks bf16 on a GPU that supports it, fp16 on an older GPU,
    fp32 on CPU."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**32:
            _fail(f"seed is {self.seed}; set it from 0 to 4294967295")
        if (
            self.schedule.max_steps
            and self.optim.warmup_steps
            and self.optim.warmup_steps >= self.schedule.max_steps
        ):
            _fail(
                f"optim.warmup_steps ({self.optim.warmup_steps}) is not below schedule.max_steps "
                f"({self.schedule.max_steps}): the run would never reach its learning rate; "
                "lower warmup_steps or raise max_steps"
            )
        if self.method == "lora" and self.compute_dtype == "fp16":
            # An fp16 base with fp32 LoRA weights and no loss scaling underflows gradients.
            _fail("compute_dtype fp16 works only with method qlora; use bf16, fp32 or auto")

    def resolve_compute_dtype(self, *, cuda: bool, bf16_supported: bool) -> str:
        """The dtype this config trains in on the given device: ``bf16``, ``fp16`` or ``fp32``.

        Raises:
            ConfigError: the requested dtype cannot run there, with the setting to use instead.
        """
        if self.compute_dtype == "auto":
            if not cuda:
                return "fp32"
            if bf16_supported:
                return "bf16"
            return "fp16" if self.method == "qlora" else "fp32"
        if not cuda and self.compute_dtype == "fp16":
            _fail("compute_dtype fp16 is not supported on CPU; use fp32 or auto")
        if cuda and self.compute_dtype == "bf16" and not bf16_supported:
            _fail("this GPU has no bf16 support; set compute_dtype to auto, fp16 or fp32")
        return self.compute_dtype

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the schema version."""
        return {"schema": CONFIG_SCHEMA, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        """Indented JSON text, as saved in the run folder."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build and check a config from :meth:`to_dict` output; missing fields take defaults.

        Raises:
            ConfigError: unknown fields, values of the wrong type, or invalid combinations.
        """
        data = dict(data)
        schema = data.pop("schema", CONFIG_SCHEMA)
        if schema != CONFIG_SCHEMA:
            _fail(f"schema {schema!r} is not supported (this version reads {CONFIG_SCHEMA})")
        return _build(cls, data, "")


def _build(cls: type[Any], data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        _fail(f"{prefix.rstrip('.') or 'the config'} must be a JSON object")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        _fail(f"unknown setting {prefix}{unknown[0]}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(typing.cast(type[Any], hint), value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_json_value(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


def _check_json_value(key: str, value: Any, hint: Any) -> Any:
    """Type-check a value read from JSON against a field's annotation."""
    if get_origin(hint) is Literal:
        if value not in get_args(hint):
            _fail(f"{key} must be one of {', '.join(get_args(hint))}; got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            _fail(f"{key} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(f"{key} must be a whole number; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(f"{key} must be a number; got {value!r}")
        return float(value)
    # str | list[str] (target modules): normalised by the dataclass itself.
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        return value
    _fail(f"{key} must be a string or a list of strings; got {value!r}")


# --- addressing settings by key ----------------------------------------------------------------

ALIASES = {"lr": "optim.learning_rate"}
"""Short names accepted by ``--set`` besides ``section.field`` and bare field names."""


def setting_keys() -> dict[str, Any]:
    """Every settable key (``section.field`` or top-level field) mapped to its type annotation."""
    keys: dict[str, Any] = {}
    for top in dataclasses.fields(TrainConfig):
        hint = typing.get_type_hints(TrainConfig)[top.name]
        if dataclasses.is_dataclass(hint):
            for sub, sub_hint in typing.get_type_hints(hint).items():
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


def describe_allowed(hint: Any) -> str:
    """Human text for the values a field accepts, used in error messages and help."""
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(get_args(hint))
    if hint is bool:
        return "true or false"
    if hint is int:
        return "a whole number"
    if hint is float:
        return "a number"
    return f"{ALL_LINEAR}, a comma list such as q,v, or a JSON list of module names"


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce_value(key: str, text: str) -> Any:
    """Turn the text of ``--set key=text`` into the field's type.

    Raises:
        ConfigError: naming the key and the values it accepts.
    """
    full = resolve_key(key)
    hint = setting_keys()[full]
    raw = text.strip()

    def bad() -> typing.NoReturn:
        raise ConfigError(f"setting {full} must be {describe_allowed(hint)}; got {text!r}")

    if get_origin(hint) is Literal:
        value = raw.lower()
        if value not in get_args(hint):
            bad()
        return value
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
    if _is_str_or_list(hint):
        if raw.startswith("["):
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                bad()
            if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
                bad()
            return parsed
        return raw
    raise AssertionError(f"no coercion for {full}: {hint!r}")


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


# --- the run folder ----------------------------------------------------------------------------

CONFIG_FILE = "config.json"


def save_config(config: TrainConfig, run_dir: Path) -> Path:
    """Write ``run_dir/config.json`` atomically and return its path."""
    path = Path(run_dir) / CONFIG_FILE
    atomic_write_bytes(path, config.to_json().encode())
    return path


def load_config(path: Path) -> TrainConfig:
    """Read a config written by :func:`save_config` (a run folder or the file itself).

    Raises:
        TrainingError: the file is missing, not JSON, or not a valid config; the message
            names the file and the setting.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"{path}: training config not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: cannot read the training config ({exc})") from None
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as exc:
        raise TrainingError(f"{path}: {exc}") from None
