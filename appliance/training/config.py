"""Training configuration: dataclasses with a docstring per field and cross-field checks.

A :class:`TrainConfig` is checked as a whole when it is built (``__post_init__``), so an object
that exists is valid; every refusal says which setting to change and to what. A run keeps its
config (:meth:`TrainConfig.to_dict`) in its folder's ``meta.json`` (see
:mod:`appliance.training.runfolder`); :func:`save_config` / :func:`load_config` write and read
one as a file of its own. The GUI binds its form to the same fields. ``--set`` parsing and
presets live in :mod:`appliance.training.settings`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance import hints
from appliance.errors import TrainingError, UsageError
from appliance.fsutil import atomic_write_bytes

CONFIG_SCHEMA = 1
"""Version of the JSON layout written by :func:`save_config`."""

Method = Literal["qlora", "lora"]
Scheduler = Literal["linear", "cosine", "constant"]
OverLength = Literal["truncate", "drop"]
LossOn = Literal["assistant", "all"]
ComputeDtype = Literal["auto", "bf16", "fp16", "fp32"]
Parallel = Literal["ddp", "fsdp"]
Batching = Literal["auto", "padded", "grouped", "packed"]
KeepMatmuls = Literal["auto", "on", "off"]

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
class SpeedSettings:
    """How the arithmetic is laid out. None changes what a step optimises; each can be turned
    off to measure its gain (bench/train.py does)."""

    batching: Batching = "auto"
    """How examples form micro-batches: padded (random order, right-padded), grouped (similar
    lengths together, shuffled by group), packed (one row per micro-batch, no padding, where the
    model's attention keeps examples apart; else grouped), or auto (packed where the attention
    kernel takes variable lengths natively, grouped elsewhere)."""
    chunked_loss: bool = True
    """Compute the loss from the hidden states of labelled positions only, a chunk of rows at a
    time, never the whole logits tensor (same loss and gradients, far less memory)."""
    fast_dropout: bool = True
    """On CPU, draw LoRA's dropout masks four values per random number instead of one."""
    fused_lora: bool = True
    """On CPU, add each LoRA product to the base projection's output inside its last matmul
    (one pass) instead of copying, scaling and adding (three)."""
    own_matmuls: bool = True
    """On CPU, run the frozen base's projections through the appliance's own path: 4-bit weights
    dequantised into one reused buffer instead of a fresh one each time, and with keep_matmuls
    their outputs recorded for the recompute instead of chosen operator by operator (the same
    numbers as bitsandbytes' and torch's layers)."""
    release_memory: bool = True
    """On CPU, hand freed memory back to the system while the model loads, after each step, and
    between decoder layers once the resident size has grown by 64 MiB (glibc), so the process's
    resident memory stays near what training needs."""
    keep_matmuls: KeepMatmuls = "auto"
    """With gradient checkpointing, keep the frozen base's projection outputs for the backward
    pass instead of computing them again (a third less matmul work a step, for one value per
    projection output a token and layer): on, off, or auto (on where the run still fits in the
    memory free when it starts, one process only)."""


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
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    """Batching layout and loss kernels: speed and memory only."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: much less memory for about 30% more time."""
    seed: int = 42
    """Seed for adapter initialisation, shuffling and dropout; equal seeds give equal runs."""
    compute_dtype: ComputeDtype = "auto"
    """Arithmetic precision: auto picks bf16 on a GPU that supports it, fp16 on an older GPU,
    fp32 on CPU."""
    parallel: Parallel = "ddp"
    """How several processes share the work: ddp (each holds the whole base, the data is split,
    only LoRA gradients are exchanged) or fsdp (the 4-bit base is sharded across GPUs, for a
    model larger than one GPU; GPU only)."""

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
        if not isinstance(data, dict):
            _fail("the config must be a JSON object")
        data = dict(data)
        schema = data.pop("schema", CONFIG_SCHEMA)
        if schema != CONFIG_SCHEMA:
            _fail(f"schema {schema!r} is not supported (this version reads {CONFIG_SCHEMA})")
        return _build(cls, data)


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    try:
        return cls(**hints.build(cls, data, unknown="refuse"))
    except hints.UnknownFieldError as exc:
        known = ", ".join(exc.known)
        _fail(f"unknown setting {exc.name}; known: {known}")
    except hints.HintError as exc:
        _fail(f"{exc.name} must be {exc.expected}; got {exc.value!r}")
    except hints.MissingFieldError as exc:  # every field has a default today; a new one may not
        _fail(f"the setting {exc.name} is missing; add it to the config")


# --- a config as a file of its own ---------------------------------------------------------------

CONFIG_FILE = "config.json"


def save_config(config: TrainConfig, run_dir: Path) -> Path:
    """Write ``run_dir/config.json`` atomically and return its path (for a user to keep)."""
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
