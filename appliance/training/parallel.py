"""Data parallelism for the training loop: DDP (LoRA gradients exchanged) or FSDP (base sharded).

:func:`wrap` puts the PEFT model and its loss into one module (:class:`LossModule`), so that the
whole forward pass, the loss included, goes through the wrapper that torch.distributed needs to
see (the chunked loss calls the decoder directly), and returns a :class:`Parallel`: the module to
call, the context that skips the gradient exchange while accumulating (``no_sync``), and the
full adapter and optimizer state for checkpoints.

* **Alone**: the model as it is.
* **DDP**: every process holds the whole base (4-bit for qlora), which it loaded itself: the
  frozen weights are left out of DDP's start-up broadcast and its buckets, so only the LoRA
  parameters are kept in step. Gradients are *summed* across processes (a communication hook)
  rather than averaged: each process's loss is already divided by the label tokens of the whole
  global batch, so the sum is the gradient a single process would compute on it.
* **FSDP** (``parallel=fsdp``, GPUs only): each decoder layer (and each LoRA leaf) is its own FSDP
  unit, flattened with ``use_orig_params`` so frozen 4-bit and trainable LoRA weights can share
  a unit; the 4-bit weights are stored in the compute dtype (``bnb_4bit_quant_storage``) so FSDP
  can shard them. FSDP averages gradients, so the loss is scaled by the world size.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from appliance.training.batching import Batch
from appliance.training.distributed import Group, share_of
from appliance.training.steps import LossFn, StepResult, apply_gradients

log = logging.getLogger("appliance.training")


class LossModule(torch.nn.Module):
    """The PEFT model and its loss as one module: what DDP and FSDP wrap and call."""

    def __init__(self, model: Any, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, int]:
        return self._loss_fn(self.model, batch)


def _sum_bucket(bucket: Any) -> torch.futures.Future[torch.Tensor]:
    """All-reduce a DDP gradient bucket as a sum (DDP's default hook averages)."""
    import torch.distributed as dist

    work = dist.all_reduce(bucket.buffer(), async_op=True)
    assert work is not None
    return work.get_future().then(lambda fut: fut.value()[0])


# DDP checks a hook's annotations against its own types, which postponed annotations (strings)
# never match: the hook it is given is a lambda, without any.
_sum_gradients = lambda _state, bucket: _sum_bucket(bucket)  # noqa: E731


@dataclass
class Parallel:
    """The model as the loop calls it, alone, under DDP or under FSDP."""

    group: Group
    mode: str
    """``single``, ``ddp`` or ``fsdp``."""
    model: Any
    """The PEFT model itself (its ``state_dict`` names are the adapter's)."""
    module: torch.nn.Module
    """What computes the loss: :class:`LossModule`, possibly wrapped."""
    device: str = "cpu"
    adapter_keys: tuple[str, ...] = ()
    """peft's names of the adapter's tensors, read before FSDP wrapped the model."""

    @property
    def _offload(self) -> bool:
        # Whole state gathered to the CPU as it is assembled (GPU memory holds one unit at a
        # time); on the CPU itself FSDP's offload would free what it just gathered.
        return self.device.startswith("cuda")

    def loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """(sum of token losses, label tokens) of ``batch``, through the wrapper."""
        result: tuple[torch.Tensor, int] = self.module(batch)
        return result

    @property
    def loss_scale(self) -> float:
        """Factor on each process's share of the loss: FSDP averages gradients over processes,
        which the factor undoes; DDP here sums them, and one process needs nothing."""
        return float(self.group.world_size) if self.mode == "fsdp" else 1.0

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Around one micro-batch's backward: no gradient exchange unless it is the step's last."""
        no_sync = getattr(self.module, "no_sync", None)
        if last or no_sync is None:
            yield
        else:
            with no_sync():
                yield

    def eval_loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """The loss without gradients: through FSDP (its forward gathers the shards on every
        process), else on the model directly."""
        if self.mode == "fsdp":
            return self.loss(batch)
        inner = getattr(self.module, "module", self.module)
        result: tuple[torch.Tensor, int] = inner(batch)
        return result

    def clip_norm(self, limit: float) -> torch.Tensor:
        """Clip the gradients to the norm ``limit``; the norm before clipping. Under FSDP the
        norm of every process's shards together (FSDP's own clipping): clipping each shard by
        its own norm would scale the processes' parts differently."""
        if self.mode == "fsdp":
            norm: torch.Tensor = self.module.clip_grad_norm_(limit)  # type: ignore[operator]
            return norm
        return torch.nn.utils.clip_grad_norm_(self.trainable(), limit)

    def trainable(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates, in the order of the model's parameters."""
        return [p for p in self.module.parameters() if p.requires_grad]

    # -- full state, for checkpoints and the adapter ---------------------------------------------

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors under peft's names, whole (every process must call it)."""
        from peft import get_peft_model_state_dict

        if self.mode != "fsdp":
            return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        # Whole parameters for the moment (every process takes part), read by name: FSDP's own
        # state-dict paths differ between one GPU (no sharding) and several, and peft's picks
        # entries by module names, which FSDP's wrappers change.
        with FSDP.summon_full_params(self.module, writeback=False, offload_to_cpu=self._offload):
            found = {
                _clean(name).replace(".default.", "."): param.detach().clone()
                for name, param in self.model.named_parameters()
                if param.requires_grad
            }
        if set(found) != set(self.adapter_keys):
            missing = sorted(set(self.adapter_keys) ^ set(found))
            raise RuntimeError(
                f"the sharded model's LoRA weights do not match peft's: {missing[0]}"
            )
        return found

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's whole state, keyed by parameter index as a single process keys it."""
        if self.mode != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        names = self._trainable_names()
        full: dict[str, Any] = dict(
            get_optimizer_state_dict(
                self.module,
                optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=self._offload),
            )
        )
        index = {name: i for i, name in enumerate(names)}
        unknown = [k for k in full.get("state", {}) if k not in index]
        if unknown:
            raise RuntimeError(f"optimizer state for {unknown[0]}, which is not a LoRA weight")
        state = {index[k]: v for k, v in full.get("state", {}).items()}
        groups = [
            {**g, "params": [index[p] for p in g["params"] if p in index]}
            for g in full.get("param_groups", [])
        ]
        return {"state": state, "param_groups": groups}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        """Load a state saved by :meth:`optimizer_state` (by any number of processes)."""
        if self.mode != "fsdp":
            optimizer.load_state_dict(saved)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        names = self._trainable_names()
        full: dict[str, Any] = {
            "state": {names[i]: v for i, v in saved["state"].items()},
            "param_groups": [
                {**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]
            ],
        }
        set_optimizer_state_dict(
            self.module, optimizer, full, options=StateDictOptions(full_state_dict=True)
        )

    def _trainable_names(self) -> list[str]:
        return [_clean(n) for n, p in self.module.named_parameters() if p.requires_grad]


def _clean(name: str) -> str:
    """A parameter's name without the FSDP wrappers' segments."""
    return name.replace("_fsdp_wrapped_module.", "")


def wrap(model: Any, loss_fn: LossFn, group: Group, mode: str, device: str) -> Parallel:
    """The model ready for the loop: alone, DDP or FSDP (``mode`` ``ddp``/``fsdp``).

    Call after LoRA is attached (and a checkpoint's adapter weights loaded), before the
    optimizer is built: FSDP replaces the parameters the optimizer must hold.
    """
    module = LossModule(model, loss_fn)
    if not group.distributed:
        return Parallel(group, "single", model, module, device)
    if mode == "fsdp":
        from peft import get_peft_model_state_dict

        keys = tuple(get_peft_model_state_dict(model))
        return Parallel(group, "fsdp", model, _fsdp(module, model, device), device, keys)
    from torch.nn.parallel import DistributedDataParallel as DDP

    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in module.named_buffers()]
    # Each process loaded the base itself; only the LoRA weights are DDP's business.
    DDP._set_params_and_buffers_to_ignore_for_model(module, frozen)
    cuda = device.startswith("cuda")
    wrapped = DDP(
        module,
        device_ids=[torch.device(device).index or 0] if cuda else None,
        broadcast_buffers=False,
        find_unused_parameters=False,
        gradient_as_bucket_view=True,
    )
    wrapped.register_comm_hook(None, _sum_gradients)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log.info("DDP over %d processes: %d LoRA parameters kept in step", group.world_size, trainable)
    return Parallel(group, "ddp", model, wrapped, device)


def _fsdp(module: LossModule, model: Any, device: str) -> torch.nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import (
        _or_policy,
        lambda_auto_wrap_policy,
        transformer_auto_wrap_policy,
    )

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_names = set(getattr(base, "_no_split_modules", None) or [])
    layer_classes = {type(m) for m in base.modules() if type(m).__name__ in layer_names}
    if not layer_classes:
        from appliance.errors import TrainingError

        raise TrainingError(
            "parallel=fsdp needs to know the model's decoder layer class (_no_split_modules), "
            "which this model does not declare; use parallel=ddp"
        )

    def trainable_leaf(sub: torch.nn.Module) -> bool:
        weight = getattr(sub, "weight", None)
        return not list(sub.children()) and weight is not None and weight.requires_grad

    policy = functools.partial(
        _or_policy,
        policies=[
            functools.partial(lambda_auto_wrap_policy, lambda_fn=trainable_leaf),
            functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_classes),
        ],
    )
    wrapped = FSDP(
        module,
        auto_wrap_policy=policy,
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        use_orig_params=True,
        device_id=torch.device(device),
        limit_all_gathers=True,
        sync_module_states=False,
    )
    log.info(
        "FSDP: %s units sharded (layer classes %s)",
        len(list(FSDP.fsdp_modules(wrapped))),
        ", ".join(sorted(c.__name__ for c in layer_classes)),
    )
    return wrapped


# --- one optimizer step over this process's share ------------------------------------------------


def cut(examples: list[Any], micro_batch_size: int) -> list[list[Any]]:
    """``examples`` in pieces of at most ``micro_batch_size``."""
    return [
        examples[start : start + micro_batch_size]
        for start in range(0, len(examples), micro_batch_size)
    ]


def share_batches(
    global_micro_batches: list[list[Any]], group: Group, micro_batch_size: int
) -> list[list[Any]]:
    """This process's micro-batches for one step: its share of each global micro-batch, cut
    into pieces of at most ``micro_batch_size`` (a resumed run on fewer processes than its
    first launch accumulates over more pieces instead of using more memory)."""
    return [
        piece
        for examples in global_micro_batches
        for piece in cut(group.share(examples), micro_batch_size)
    ]


def every_share(world_size: int, micro_batch_size: int) -> Callable[[list[Any]], list[list[Any]]]:
    """A global micro-batch cut as every process computes it (all pieces of all processes),
    for :meth:`~appliance.training.batching.BatchPlan.padding_share`."""

    def split(items: list[Any]) -> list[list[Any]]:
        return [
            piece
            for rank in range(world_size)
            for piece in cut(share_of(items, rank, world_size), micro_batch_size)
        ]

    return split


def check_shares(train_examples: int, global_micro_batch: int, group: Group) -> None:
    """Every process must get an example of every global micro-batch, the last one included.

    Raises:
        TrainingError: naming the numbers (the parent checks new runs before they are made;
            this catches a resume on more processes, or examples dropped at tokenising).
    """
    if not group.distributed:
        return
    from appliance.errors import TrainingError

    left = train_examples % global_micro_batch
    if global_micro_batch < group.world_size or 0 < left < group.world_size:
        short = global_micro_batch if global_micro_batch < group.world_size else left
        raise TrainingError(
            f"{group.world_size} processes cannot share this run's micro-batches: a global "
            f"micro-batch holds {global_micro_batch} of the {train_examples} training "
            f"examples and {short} are left for one of them; resume it on at most "
            f"{max(1, min(global_micro_batch, left or global_micro_batch))} processes, or start "
            "a new run with another micro_batch_size"
        )


def train_step(
    parallel: Parallel,
    batches: list[Batch],
    device: str,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    max_grad_norm: float,
) -> StepResult:
    """Accumulate over this process's ``batches`` and apply one optimizer step.

    :mod:`appliance.training.steps`'s normalisation rule, across processes: each token loss is
    divided by the label tokens of the whole global batch (every process and micro-batch of the
    step, counted from the labels and summed over the processes before any forward pass), and
    the processes' gradients are summed, so the step equals a single process's step on the same
    global batch however it is split. Alone, it is :func:`steps.train_step` with ``no_sync``
    and the loss going through :class:`LossModule`.

    Returns:
        The step's figures summed over every process (loss per label token of the global batch,
        label, real and computed tokens of all processes).
    """
    group = parallel.group
    local = [
        sum(b.trained_tokens for b in batches),
        sum(b.real_tokens for b in batches),
        sum(b.computed_tokens for b in batches),
    ]
    (labels,) = group.sum(local[:1])
    scale = parallel.loss_scale / labels
    total = torch.zeros((), dtype=torch.float32, device=device)
    for position, batch in enumerate(batches):
        with parallel.accumulating(last=position == len(batches) - 1):
            loss_sum, _ = parallel.loss(batch.to(device))
            (loss_sum * scale).backward()
        total += loss_sum.detach().float()
    norm = apply_gradients(params, optimizer, scheduler, max_grad_norm, parallel.clip_norm)
    loss_total, real, computed = group.sum([float(total), *local[1:]])
    return StepResult(
        loss=loss_total / labels,
        grad_norm=norm,
        label_tokens=int(labels),
        real_tokens=int(real),
        computed_tokens=int(computed),
    )
