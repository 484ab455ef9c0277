"""Pre-flight estimate of a training run's peak memory, from config.json, a TrainConfig and the
token lengths of the data.

The model is read from its Hugging Face ``config.json`` (a dense decoder: LLaMA, Mistral, Qwen2,
SmolLM...), never loaded; torch is never imported. The sum follows the reference formula of
docs/engineering-notes.md ("Peak memory of QLoRA training"), one line per term::

    M ~ W + E + 16 * P_lora + A + Z + D (+ C on a GPU, + R on the CPU)

W: the linear layers' weights, 4-bit NF4 (0.516 bytes a parameter with double quantisation,
0.5625 without) for qlora or 16/32-bit for lora. E: embeddings, LM head and norms (upcast to fp32
only with fp16 compute, as :mod:`appliance.training.model` does). P_lora: LoRA parameters counted
from the shapes; 16 bytes each for fp32 weight, gradient and two AdamW moments. A: activations kept
for the backward pass. Z: logits for the loss (one chunk of labelled rows with the chunked loss,
the whole batch x sequence x vocabulary otherwise). D: dequantisation scratch. C: the CUDA
context, which NVML sees and torch does not. R: on the CPU the peak is the process's resident
memory, which also holds the interpreter and the libraries (torch, transformers, peft,
bitsandbytes), the step's temporaries and the allocator's slack (a share of the step's tensors),
and either a checkpoint being saved or the model being loaded where those need more than a step;
its terms were calibrated against measured peak RSS of the demo model (bench/estimate.py).

Activations and logits scale with the tokens of the largest micro-batch the run can form, not
with ``max_seq_length``: micro-batches are padded only to their longest example (or packed).
Given the training examples' token lengths, the estimate sizes them from the longest micro-batch
those lengths can make (capped by ``max_seq_length``) and says which length it used; without
lengths it assumes every example fills ``max_seq_length``. Sizes are in bytes; "GB" in the text
means 10^9 bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import TrainingError
from appliance.training.config import ALL_LINEAR, ConfigError, KeepMatmuls, TrainConfig
from appliance.training.settings import apply_overrides

NF4_DOUBLE_QUANT_BYTES = 0.516
"""Bytes per parameter of NF4 with double quantisation (4 bits + block constants)."""
NF4_BYTES = 0.5625
"""Bytes per parameter of NF4 with one fp32 absmax per 64-value block."""
LORA_BYTES_PER_PARAM = 16
"""fp32 weight + gradient + AdamW's two moments."""
LOGITS_FACTOR = 3.0
"""fp32 logit tensors alive at the loss in stock transformers (logits, upcast, gradient): 2 to 4."""
DEQUANT_SCRATCH_FACTOR = 2.5
"""Dequantised copies of the largest 4-bit matrix alive at once (forward and backward overlap)."""
CUDA_CONTEXT_BYTES = 500_000_000
"""CUDA context and kernels of the training process (0.3-0.6 GB seen on NVML)."""
CHUNK_ELEMENTS = 1 << 24
"""Logit values the chunked loss (:mod:`appliance.training.loss`) takes at once: 64 MB in fp32."""
CHUNKED_LOGIT_BYTES = 12
"""Bytes per logit value alive in a chunk of the chunked loss: the fp32 logits, logsumexp's
fp32 temporary, and the 16/32-bit probabilities fed to the input-gradient matmul."""
CPU_RUNTIME_BYTES = 520_000_000
"""Resident memory of the training child on the CPU before any weight is loaded: Python, torch,
transformers, peft, bitsandbytes, the tokenizer (measured: bench/estimate.py)."""
CPU_LOAD_TENSORS = 1
"""Weight tensors (as stored in the file) read and not yet converted at any moment while the
model loads on the CPU: they are read one at a time (:mod:`appliance.training.weights`), the
largest being the embeddings. Before, the whole file was mapped (0.9 of it measured resident)."""
CPU_CHECKPOINT_COPIES = 2.0
"""Copies of the LoRA weights and AdamW moments (12 bytes a parameter) alive while a checkpoint
is serialised and encrypted on the CPU."""
CPU_STEP_SLACK = 0.0
"""Resident memory a CPU step holds beyond its tensor terms (activations, LoRA input copies,
logits, dequantisation), as a share of them. It was 0.4 (fitted: 0.35-0.5) while glibc kept the
freed dequantised weights and temporaries resident until the step's ``malloc_trim``; since the
trainer trims before each part of each decoder layer (:mod:`appliance.training.allocator`) the
measured peaks of the demo model's four settings sit 10-16% below the tensor terms alone
(bench/estimate.py, docs/benchmarks.md: the terms are sized for the worst case, e.g. the
activations term is 19% above what autograd keeps on the CPU, bench/activations.py), so
nothing is added."""

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

KEEP_MATMULS_SHARE = 0.9
"""``speed.keep_matmuls=auto`` keeps the base's projection outputs when the estimate with them
is at most this share of the memory free at the start (the rest is the estimate's margin)."""

TENSOR_TERMS = frozenset(
    {"weights", "embeddings", "lora", "activations", "kept", "lora_inputs", "logits", "dequant"}
)
"""Terms torch allocates on the training device (the rest: CUDA context, CPU process terms)."""

LAYER_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The seven linear projections of a LLaMA-style decoder layer."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a dense decoder that the estimate needs."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read the shape from a ``config.json`` dict (``text_config`` of a multimodal one).

        Raises:
            TrainingError: a required field is missing or not a positive integer.
        """
        if "hidden_size" not in config and isinstance(config.get("text_config"), Mapping):
            config = config["text_config"]

        def need(*names: str) -> int:
            for name in names:
                value = config.get(name)
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise TrainingError(
                            f"model config.json: {name} is {value!r}, not a positive integer"
                        )
                    return value
            raise TrainingError(
                f"model config.json has no {names[0]}; the memory estimate needs a dense decoder "
                "config (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, "
                "vocab_size)"
            )

        hidden = need("hidden_size", "n_embd", "d_model")
        heads = need("num_attention_heads", "n_head")
        kv_heads = need("num_key_value_heads") if config.get("num_key_value_heads") else heads
        head_dim = need("head_dim") if config.get("head_dim") else hidden // heads
        return cls(
            layers=need("num_hidden_layers", "n_layer"),
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=need("intermediate_size", "n_inner"),
            vocab=need("vocab_size"),
            # Missing means untied here: the larger figure is the safe one for a "will it fit".
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection in one decoder layer."""
        q_out = self.heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q_out),
            "k_proj": (self.hidden, kv_out),
            "v_proj": (self.hidden, kv_out),
            "o_proj": (q_out, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    def projection_outputs(self) -> int:
        """Output values of one decoder layer's projections a token (``3h + 2kv + 2f``)."""
        return sum(out for _, out in self.linear_shapes().values())

    @property
    def linear_params(self) -> int:
        """Parameters in the decoder layers' linear projections (the quantised part)."""
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Token embeddings plus the LM head (once when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def norm_params(self) -> int:
        """RMSNorm weights: two per layer and the final one."""
        return (2 * self.layers + 1) * self.hidden

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params


def targeted_modules(target_modules: str | list[str]) -> list[str]:
    """The layer projections LoRA wraps: all seven for ``all-linear`` (peft leaves out the LM head).

    Raises:
        TrainingError: no name matches a projection this estimate knows.
    """
    if target_modules == ALL_LINEAR:
        return list(LAYER_MODULES)
    wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    # peft matches a name as the suffix of a module path; so does this.
    found = [m for m in LAYER_MODULES if any(m == w.rsplit(".", 1)[-1] for w in wanted)]
    if not found:
        raise TrainingError(
            f"LoRA target modules {', '.join(wanted)} match no projection of this model "
            f"({', '.join(LAYER_MODULES)}); set lora.target_modules to all-linear or q,v"
        )
    return found


def lora_parameter_count(shape: ModelShape, rank: int, target_modules: str | list[str]) -> int:
    """Exact LoRA parameters: r x (in + out) for each wrapped projection of each layer."""
    shapes = shape.linear_shapes()
    per_layer = sum(rank * sum(shapes[name]) for name in targeted_modules(target_modules))
    return shape.layers * per_layer


@dataclass(frozen=True)
class EstimateItem:
    """One term of the estimate."""

    key: str
    """Stable id: weights, embeddings, lora, activations, lora_inputs, logits, dequant, context
    (GPU); checkpoint, loading, runtime (CPU)."""
    label: str
    bytes: int
    detail: str
    """How the figure was obtained, for the breakdown."""


@dataclass(frozen=True)
class MemoryEstimate:
    """A peak-memory estimate with its breakdown."""

    items: tuple[EstimateItem, ...]
    device: str
    """``cuda`` or ``cpu``."""
    dtype: str
    """Compute dtype the estimate assumed (bf16, fp16, fp32)."""
    trainable_params: int
    total_params: int
    tokens: int = 0
    """Positions of the largest micro-batch the estimate sized activations for."""
    sized_from: str = ""
    """How that size was found, for the user (which length, from where)."""
    kept_matmuls: bool = False
    """Whether the run keeps the base's projection outputs for the backward pass
    (``speed.keep_matmuls``, with ``auto`` decided here against the budget)."""

    @property
    def total_bytes(self) -> int:
        """Peak the device needs, the CUDA context included (compare with NVML's free memory)."""
        return sum(item.bytes for item in self.items)

    @property
    def allocated_bytes(self) -> int:
        """The part torch allocates (compare with ``torch.cuda.max_memory_allocated``)."""
        return sum(item.bytes for item in self.items if item.key in TENSOR_TERMS)

    def item(self, key: str) -> EstimateItem:
        for entry in self.items:
            if entry.key == key:
                return entry
        raise KeyError(key)

    def fits(self, free_bytes: int) -> bool:
        """Whether the estimated peak fits in ``free_bytes``."""
        return self.total_bytes <= free_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``started`` event carries it)."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "total_bytes": self.total_bytes,
            "allocated_bytes": self.allocated_bytes,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "tokens": self.tokens,
            "sized_from": self.sized_from,
            "kept_matmuls": self.kept_matmuls,
            "items": [dataclasses.asdict(item) for item in self.items],
        }


def _gb(value: float) -> str:
    """Decimal size: GB with two decimals, MB below 1 GB (a small model's terms)."""
    if abs(value) >= 1e9:
        return f"{value / 1e9:.2f} GB"
    return f"{value / 1e6:.1f} MB"


def longest_micro_batch(lengths: Sequence[int], micro_batch_size: int, packed: bool) -> int:
    """Positions of the largest micro-batch examples of ``lengths`` can form.

    Padded rows (random or length-grouped order): the longest example times the micro-batch
    size, since some micro-batch holds it and is padded to it. Packed: the sum of the
    ``micro_batch_size`` longest examples, laid end to end.
    """
    top = sorted(lengths, reverse=True)[:micro_batch_size]
    if not top:
        return 0
    return sum(top) if packed else micro_batch_size * top[0]


def micro_batch_tokens(config: TrainConfig, lengths: Sequence[int] | None) -> tuple[int, str]:
    """(tokens, how) of the largest micro-batch: what activations are sized for.

    ``lengths`` are the training examples' token lengths; each is capped at ``max_seq_length``
    (the training data truncates or drops longer ones). Without them every example is assumed
    to fill ``max_seq_length``.
    """
    b = config.schedule.micro_batch_size
    limit = config.data.max_seq_length
    packed = config.speed.batching == "packed"
    if not lengths:
        return b * limit, f"{b} x {limit} tokens: max_seq_length (no token lengths of the data)"
    capped = [min(n, limit) for n in lengths]
    longest = max(capped)
    tokens = longest_micro_batch(capped, b, packed)
    cap = f", capped by max_seq_length {limit}" if max(lengths) > limit else ""
    if packed:
        how = (
            f"{tokens} tokens: the {min(b, len(capped))} longest of {len(capped)} examples "
            f"packed in one row (longest {longest}{cap})"
        )
        return tokens, how
    how = f"{b} x {longest} tokens: the longest of {len(capped)} examples{cap}, padded"
    return tokens, how


def estimate_memory(
    model_config: Mapping[str, Any],
    config: TrainConfig,
    *,
    device: str = "cuda",
    bf16_supported: bool = True,
    lengths: Sequence[int] | None = None,
    kbit_upcast: bool | None = None,
    logits_factor: float = LOGITS_FACTOR,
    budget: int | None = None,
    labelled: Sequence[int] | None = None,
) -> MemoryEstimate:
    """Estimate the peak memory of training ``config`` on the model of ``model_config``.

    Args:
        model_config: the model's ``config.json`` as a dict.
        config: the training config.
        device: ``cuda`` (adds the CUDA context) or ``cpu`` (adds the process's runtime).
        bf16_supported: whether the GPU has bf16, for ``compute_dtype=auto``.
        lengths: token lengths of the training examples; activations and logits are sized from
            the longest micro-batch they can form (see :func:`micro_batch_tokens`).
        kbit_upcast: whether the qlora path upcasts 16-bit non-quantised weights (embeddings,
            LM head, norms) to fp32; by default as the training path does (fp16 compute only).
        logits_factor: fp32 logit-sized tensors alive at the loss on the whole-logits path.
        budget: the memory free for this one process (a GPU's free memory, or the available
            RAM); with ``speed.keep_matmuls=auto`` the projection outputs are kept when the
            estimate with them stays within :data:`KEEP_MATMULS_SHARE` of it. None (unknown,
            or several processes, which must decide alike): not kept.
        labelled: positions each training example trains on (its labels after the shift);
            the chunked loss computes logits for those only, so its term is sized from the
            most a micro-batch can hold. None: every position of the micro-batch.

    Raises:
        TrainingError: the model config lacks a field, or no target module matches.
        ConfigError: the compute dtype cannot run on ``device``.
    """
    keep = config.speed.keep_matmuls
    if keep == "auto" or (keep == "on" and not config.gradient_checkpointing):
        kwargs: dict[str, Any] = {
            "device": device,
            "bf16_supported": bf16_supported,
            "lengths": lengths,
            "kbit_upcast": kbit_upcast,
            "logits_factor": logits_factor,
            "labelled": labelled,
        }
        if keep == "auto" and config.gradient_checkpointing and budget is not None:
            kept = estimate_memory(model_config, _keeping(config, "on"), **kwargs)
            if kept.total_bytes <= KEEP_MATMULS_SHARE * budget:
                return kept
        return estimate_memory(model_config, _keeping(config, "off"), **kwargs)
    shape = ModelShape.from_config(model_config)
    cuda = device == "cuda"
    dtype = config.resolve_compute_dtype(cuda=cuda, bf16_supported=bf16_supported)
    width = DTYPE_BYTES[dtype]
    tokens, sized_from = micro_batch_tokens(config, lengths)
    h, L = shape.hidden, shape.layers
    qlora = config.method == "qlora"
    items: list[EstimateItem] = []

    if qlora:
        per = NF4_DOUBLE_QUANT_BYTES
        items.append(
            EstimateItem(
                "weights",
                "4-bit linear weights",
                round(per * shape.linear_params),
                f"{shape.linear_params / 1e6:,.1f} M params x {per} B (NF4, double quant)",
            )
        )
    else:
        items.append(
            EstimateItem(
                "weights",
                f"{dtype} linear weights",
                width * shape.linear_params,
                f"{shape.linear_params / 1e6:,.1f} M params x {width} B",
            )
        )

    if kbit_upcast is None:
        kbit_upcast = dtype == "fp16"
    embed_width = 4 if (qlora and kbit_upcast) else width
    other = shape.embedding_params + shape.norm_params
    tied = "tied" if shape.tied_embeddings else "untied"
    upcast = ", upcast to fp32 for k-bit training" if embed_width == 4 and width < 4 else ""
    items.append(
        EstimateItem(
            "embeddings",
            "embeddings, LM head, norms",
            embed_width * other,
            f"{other / 1e6:,.1f} M params ({tied}) x {embed_width} B{upcast}",
        )
    )

    lora_params = lora_parameter_count(shape, config.lora.rank, config.lora.target_modules)
    items.append(
        EstimateItem(
            "lora",
            "LoRA weights, grads, AdamW",
            LORA_BYTES_PER_PARAM * lora_params,
            f"{lora_params / 1e6:,.2f} M params x {LORA_BYTES_PER_PARAM} B (fp32)",
        )
    )

    # One decoder layer keeps about 6h + 2h_kv + 4f values a token for its backward pass
    # (norm inputs, q, attention output, MLP gate/up/act); 16-bit values take 2 bytes.
    kv_width = shape.kv_heads * shape.head_dim
    layer_values = 6 * h + 2 * kv_width + 4 * shape.intermediate
    one_layer = width * tokens * layer_values
    if config.gradient_checkpointing:
        activations = width * L * tokens * h + one_layer
        how = f"checkpointing: {L} layer inputs + one layer, {tokens:,} tokens"
    else:
        activations = L * one_layer
        how = f"no checkpointing: {L} layers x {layer_values:,} values a token, {tokens:,} tokens"
    items.append(EstimateItem("activations", "activations", activations, how))
    if keep == "on":
        outputs = shape.projection_outputs()
        items.append(
            EstimateItem(
                "kept",
                "kept projection outputs",
                width * L * tokens * outputs,
                f"{L} layers x {outputs:,} values a token x {tokens:,} tokens (speed.keep_matmuls)",
            )
        )

    # peft's LoRA layer casts each wrapped projection's input to the adapter's fp32 (no autocast
    # in our loop) and applies dropout to it; lora_A keeps that copy (and dropout its mask) for
    # the backward pass, once per wrapped projection. torch's dropout keeps a boolean mask; the
    # CPU's fast dropout keeps its random 16-bit lanes (dropout.FastDropout).
    mask = 2 if not cuda and config.speed.fast_dropout else 1
    per_value = (4 if width < 4 else (width if config.lora.dropout > 0 else 0)) + (
        mask if config.lora.dropout > 0 else 0
    )
    if per_value:
        shapes = shape.linear_shapes()
        ins = sum(shapes[m][0] for m in targeted_modules(config.lora.target_modules))
        layers_kept = 1 if config.gradient_checkpointing else L
        items.append(
            EstimateItem(
                "lora_inputs",
                "LoRA input copies",
                layers_kept * per_value * tokens * ins,
                f"{layers_kept} layer(s) x {ins:,} input values a token x {per_value} B",
            )
        )

    if config.speed.chunked_loss:
        # Only labelled positions get logits, a chunk of rows at a time; at most every position.
        rows = tokens
        if labelled:
            top = sorted(labelled, reverse=True)[: config.schedule.micro_batch_size]
            rows = min(tokens, sum(top))
        chunk = min(rows, max(1, CHUNK_ELEMENTS // shape.vocab))
        logits = chunk * shape.vocab * CHUNKED_LOGIT_BYTES
        how = f"chunked loss: {chunk:,} rows x V={shape.vocab:,} x {CHUNKED_LOGIT_BYTES} B"
        if labelled:
            how += f" (a micro-batch trains on at most {rows:,} positions)"
    else:
        logits = round(logits_factor * tokens * shape.vocab * 4)
        how = f"{logits_factor:g} x {tokens:,} tokens x V={shape.vocab:,} x 4 B"
    items.append(EstimateItem("logits", "logits for the loss", logits, how))

    if qlora:
        largest = max(i * o for i, o in shape.linear_shapes().values())
        # The CPU's own 4-bit matmuls dequantise into one reused buffer (frozen_matmul).
        copies = 1 if not cuda and config.speed.own_matmuls else DEQUANT_SCRATCH_FACTOR
        items.append(
            EstimateItem(
                "dequant",
                "dequantisation scratch",
                round(copies * largest * width),
                f"{copies:g} x the largest matrix ({largest / 1e6:,.1f} M) in {dtype}",
            )
        )
    if cuda:
        items.append(
            EstimateItem(
                "context", "CUDA context", CUDA_CONTEXT_BYTES, "kernels and context (NVML only)"
            )
        )
    else:
        items.extend(_cpu_items(shape, model_config, lora_params, items))
    return MemoryEstimate(
        items=tuple(items),
        device=device,
        dtype=dtype,
        trainable_params=lora_params,
        total_params=shape.total_params + lora_params,
        tokens=tokens,
        sized_from=sized_from,
        kept_matmuls=keep == "on",
    )


def _keeping(config: TrainConfig, keep: KeepMatmuls) -> TrainConfig:
    """``config`` with ``speed.keep_matmuls`` set to ``keep``."""
    speed = dataclasses.replace(config.speed, keep_matmuls=keep)
    return dataclasses.replace(config, speed=speed)


def _cpu_items(
    shape: ModelShape,
    model_config: Mapping[str, Any],
    lora_params: int,
    items: Sequence[EstimateItem],
) -> list[EstimateItem]:
    """The CPU process's terms: step slack, a checkpoint being saved, model loading, runtime.

    A step's tensors, a checkpoint being saved and the model being loaded are never alive at
    the same time: the checkpoint is written between steps, after the step's tensors are freed,
    and loading ends before training starts. The largest of the three sets the peak, so the
    ``checkpoint`` and ``loading`` terms are what each adds beyond the step's own (usually 0).
    """
    step_tensors = sum(
        i.bytes for i in items if i.key in ("activations", "lora_inputs", "logits", "dequant")
    )
    slack = round(CPU_STEP_SLACK * step_tensors)
    # Kept projection outputs live from the forward pass to the backward: no churn, no slack.
    step = step_tensors + slack + sum(i.bytes for i in items if i.key == "kept")
    saving = round(CPU_CHECKPOINT_COPIES * 12 * lora_params)
    stored = str(model_config.get("torch_dtype") or model_config.get("dtype") or "bfloat16")
    tensor_bytes = (4 if "32" in stored else 2) * shape.vocab * shape.hidden
    loading = CPU_LOAD_TENSORS * tensor_bytes
    lora_states = sum(i.bytes for i in items if i.key == "lora")  # not alive while loading
    return [
        EstimateItem(
            "slack",
            "step temporaries and allocator slack",
            slack,
            f"{CPU_STEP_SLACK:g} x the step's tensors ({step_tensors / 1e6:,.0f} MB): the heap is "
            "trimmed before each layer, the tensor terms already cover the backward pass",
        ),
        EstimateItem(
            "checkpoint",
            "checkpoint being saved (beyond the step)",
            max(0, saving - step),
            f"{CPU_CHECKPOINT_COPIES:g} x {lora_params / 1e6:,.2f} M LoRA params x 12 B "
            f"= {saving / 1e6:,.0f} MB between steps, less what a step holds",
        ),
        EstimateItem(
            "loading",
            "model loading (beyond the step)",
            max(0, loading - step - lora_states),
            f"{CPU_LOAD_TENSORS} {stored} tensor read at a time while loading (the "
            f"embeddings: {tensor_bytes / 1e6:,.0f} MB), less what a step holds",
        ),
        EstimateItem(
            "runtime",
            "process runtime",
            CPU_RUNTIME_BYTES,
            "interpreter, torch, transformers, peft, tokenizer, data",
        ),
    ]


# --- what to change when it does not fit --------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    """A change to the config and the estimate it would give."""

    assignments: tuple[str, ...]
    """``--set`` assignments that make the change."""
    text: str
    total_bytes: int
    fits: bool


def _candidates(
    config: TrainConfig, longest: int | None = None
) -> Iterable[tuple[tuple[str, ...], str]]:
    sched = config.schedule
    if not config.gradient_checkpointing:
        yield ("gradient_checkpointing=true",), "turn gradient checkpointing on"
    elif config.speed.keep_matmuls == "on":
        yield ("keep_matmuls=off",), "recompute the base's projections (keep_matmuls off)"
    b = sched.micro_batch_size
    while b > 1:
        b //= 2
        # Keep the effective batch: halve the micro-batch, multiply the accumulation.
        accum = sched.gradient_accumulation_steps * (sched.micro_batch_size // b)
        yield (
            (f"micro_batch_size={b}", f"gradient_accumulation_steps={accum}"),
            f"micro-batch {b} with gradient accumulation {accum} (same effective batch)",
        )
    s = min(config.data.max_seq_length, longest or config.data.max_seq_length)
    while s > 256:
        s //= 2
        yield (f"max_seq_length={s}",), f"sequences of at most {s} tokens"
    if config.method == "lora":
        yield ("method=qlora",), "4-bit base weights (method qlora)"


def suggest_changes(
    model_config: Mapping[str, Any],
    config: TrainConfig,
    free_bytes: int,
    **estimate_kwargs: Any,
) -> list[Suggestion]:
    """Changes that would make the run fit in ``free_bytes``, each recomputed, gentlest first.

    For each kind of change (checkpointing, micro-batch, sequence length, 4-bit base) the
    mildest setting that fits is kept; when no single change fits, all of them together are
    tried. The list is empty when the run already fits or nothing can make it fit.
    """
    if estimate_memory(model_config, config, **estimate_kwargs).fits(free_bytes):
        return []
    found: list[Suggestion] = []
    kinds_done: set[str] = set()
    lengths = estimate_kwargs.get("lengths")
    longest = max(lengths) if lengths else None
    for assignments, text in _candidates(config, longest):
        kind = assignments[0].split("=")[0]
        if kind in kinds_done:
            continue
        try:
            changed = apply_overrides(config, list(assignments))
        except ConfigError:
            continue
        total = estimate_memory(model_config, changed, **estimate_kwargs).total_bytes
        if total <= free_bytes:
            found.append(Suggestion(assignments, text, total, True))
            kinds_done.add(kind)
    if found:
        return found
    # No single change fits: add changes in the same order, mildest first, until one fits.
    applied: dict[str, str] = {}
    texts: dict[str, str] = {}
    total = 0
    for assignments, text in _candidates(config, longest):
        kind = assignments[0].split("=")[0]
        trial = {**applied, **dict(a.split("=", 1) for a in assignments)}
        try:
            changed = apply_overrides(config, [f"{k}={v}" for k, v in trial.items()])
        except ConfigError:
            continue
        applied, texts[kind] = trial, text
        total = estimate_memory(model_config, changed, **estimate_kwargs).total_bytes
        if total <= free_bytes:
            break
    if not applied:
        return []
    return [
        Suggestion(
            tuple(f"{k}={v}" for k, v in applied.items()),
            "all of: " + "; ".join(texts.values()),
            total,
            total <= free_bytes,
        )
    ]


# --- text for the CLI ---------------------------------------------------------------------------


def render_estimate(
    estimate: MemoryEstimate,
    free_bytes: int | None = None,
    suggestions: Iterable[Suggestion] = (),
) -> list[str]:
    """The breakdown as text lines for the terminal, with the verdict and suggestions."""
    where = "GPU" if estimate.device == "cuda" else "RAM"
    lines = [
        f"Estimated peak {where} memory: {_gb(estimate.total_bytes)} "
        f"({estimate.dtype}; trainable {estimate.trainable_params / 1e6:,.2f} M "
        f"of {estimate.total_params / 1e6:,.1f} M parameters)"
    ]
    if estimate.sized_from:
        lines.append(f"  sized for the largest micro-batch: {estimate.sized_from}")
    width = max(len(item.label) for item in estimate.items)
    lines.extend(
        f"  {item.label:<{width}}  {_gb(item.bytes):>9}  {item.detail}" for item in estimate.items
    )
    if free_bytes is not None:
        if estimate.fits(free_bytes):
            lines.append(f"Free {where} memory: {_gb(free_bytes)}: it should fit.")
        else:
            lines.append(
                f"Warning: free {where} memory is {_gb(free_bytes)}, "
                f"{_gb(estimate.total_bytes - free_bytes)} short."
            )
            suggestions = list(suggestions)
            for suggestion in suggestions:
                verdict = "fits" if suggestion.fits else "still does not fit"
                lines.append(
                    f"  Try {suggestion.text}: {_gb(suggestion.total_bytes)}, {verdict} "
                    f"(--set {' --set '.join(suggestion.assignments)})"
                )
            if not any(s.fits for s in suggestions):
                lines.append(
                    "  No change of settings fits: use a GPU with more free memory or a "
                    "smaller base model."
                )
    return lines
