"""The training loop of the child: model setup, steps, evaluation, checkpoints, the adapter.

A plain loop rather than HF Trainer, for full control over the event stream, memory readouts,
checkpoint contents and exact resumption. :class:`Trainer` is built from the run's spec, config,
run key and decrypted rows, and :meth:`Trainer.run` trains until the end or a stop request:

    setup  -> load tokenizer + model (4-bit for qlora), LoRA, AdamW, schedule, last checkpoint
    run    -> started, [eval at step 0], step..., eval every N, checkpoint every N,
              stopped (after a checkpoint) | final eval, adapter, finished

With several processes (a :class:`~appliance.training.distributed.Group` from torchrun) the same
loop runs in each: the batch plan (:mod:`appliance.training.batching`: length-grouped or packed,
from the seed) is that of one process with micro-batches of ``micro_batch_size x processes``
examples (the *global micro-batch*), each process takes its contiguous share of every one, the
model is wrapped by :mod:`appliance.training.parallel` (DDP or FSDP), the loss of a step is
divided by the label tokens of the whole global batch (summed across processes), the processes
agree on when to stop, evaluation is shared out, and only rank 0 writes checkpoints and the
adapter.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from appliance import adapters
from appliance.datasets.canonical import Row
from appliance.errors import TrainingError
from appliance.training import allocator
from appliance.training import checkpoint as ckpt
from appliance.training import events as ev
from appliance.training.batching import IGNORE, Batch, BatchPlan, collate, total_steps
from appliance.training.config import TrainConfig
from appliance.training.data import tokenise
from appliance.training.distributed import Group
from appliance.training.loss import causal_lm_loss
from appliance.training.memory import available_ram, process_peak_rss
from appliance.training.model import MODES, enable_checkpointing, load_for_training
from appliance.training.parallel import (
    Parallel,
    check_shares,
    every_share,
    share_batches,
    train_step,
    wrap,
)
from appliance.training.placement import Topology
from appliance.training.runfolder import ADAPTER_FILE, CHECKPOINTS_DIR, RunSpec
from appliance.training.steps import StepResult
from appliance.vault.objects import new_object_id, write_object

__all__ = ["Trainer", "enable_checkpointing", "loss_sum", "lr_factor", "peak_memory"]

log = logging.getLogger("appliance.training")

RECENT = 10
"""Steps averaged for throughput, ETA and the final training loss."""


def lr_factor(step: int, total: int, warmup: int, scheduler: str) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def peak_memory(device: str) -> int:
    """Torch's peak allocation on a GPU, the process's peak resident memory on CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return process_peak_rss() or 0


def loss_sum(model: Any, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy of the batch's labelled tokens (divide by ``trained_tokens``).

    The one definition of the loss (:func:`appliance.training.loss.causal_lm_loss`, chunked
    where the model allows): training, its eval passes and ``appliance eval`` use it.
    """
    return causal_lm_loss(model, batch)[0]


class Trainer:
    """One launch of a run: set up, then train until done or asked to stop."""

    def __init__(
        self,
        *,
        spec: RunSpec,
        config: TrainConfig,
        run_dir: Path,
        run_key: bytes,
        rows: list[Row],
        events: ev.EventLog,
        group: Group | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.spec = spec
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_key = run_key
        self.rows = rows
        self.events = events
        self.group = group if group is not None else Group()
        self.topology = topology
        self.cuda = torch.cuda.is_available()
        self.device_index = self.group.local_rank if self.group.distributed else 0
        self.device = f"cuda:{self.device_index}" if self.cuda else "cpu"
        self.step_hooks: list[Any] = []
        """Called with the step number after every step, in every process (memory gathers)."""
        self.state = ckpt.TrainerState()
        self.estimate: dict[str, Any] | None = None
        self.free_at_start: int | None = None
        self._stop = threading.Event()
        self._saved_step = -1
        self._last_eval_step = -1
        self._resumed_from: str | None = None
        self.model: Any = None

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and stop (safe from a signal handler)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        """Tokenise, load the model with LoRA, build the optimizer, resume if possible."""
        from transformers import AutoTokenizer

        cfg = self.config
        bf16 = bool(self.cuda and torch.cuda.is_bf16_supported())
        self.dtype_name = cfg.resolve_compute_dtype(cuda=self.cuda, bf16_supported=bf16)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
            self.dtype_name
        ]
        model_dir = Path(self.spec.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=False
        )
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.data = tokenise(self.rows, tokenizer, cfg.data)
        self.rows = []  # the plaintext rows are no longer needed
        self.group.same_everywhere(self._digest(), "model, dataset or settings")
        sched = cfg.schedule
        root = self.run_dir / CHECKPOINTS_DIR
        if self.group.writes_checkpoints and ckpt.clean_partial(root):
            log.warning("removed the remains of a checkpoint save that was interrupted")
        self.group.barrier()  # nobody reads the checkpoints while rank 0 tidies them
        # Read before the plan and the model: a resumed run keeps its first launch's global
        # micro-batch and batching.
        found = ckpt.latest(root, self.run_key)
        self.global_micro_batch = (
            found[1].state.global_micro_batch
            if found is not None and found[1].state.global_micro_batch
            else sched.micro_batch_size * (self.group.world_size if found is None else 1)
        )
        check_shares(len(self.data.train), self.global_micro_batch, self.group)
        self.total_steps = total_steps(
            BatchPlan(self.data.train, self.global_micro_batch, cfg.seed),
            sched.epochs,
            sched.max_steps,
            sched.gradient_accumulation_steps,
        )
        self.warmup = cfg.optim.warmup_for(self.total_steps)
        self._estimate(model_dir, bf16)

        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        mode = self._parallel_mode()
        self.trim_memory = cfg.speed.release_memory and not self.cuda
        with allocator.loading() if self.trim_memory else contextlib.nullcontext():
            loaded = load_for_training(
                model_dir,
                cfg,
                cuda=self.cuda,
                dtype=dtype,
                batching=(found[1].state.batching or None) if found is not None else None,
                device_index=self.device_index,
                fsdp=mode == "fsdp" and self.group.distributed,
                keep_matmuls=self.keep_matmuls,
            )
        self.model = loaded.model
        self.paths = loaded
        if self.trim_memory:
            allocator.trim_between_layers(self.model)
        # Each process chose its paths itself (the packing probe runs on its own device).
        choice = f"{loaded.batching} {loaded.chunked_loss}".encode()
        self.group.same_everywhere(hashlib.sha256(choice).digest(), "batching or loss path")
        order, layout = MODES[loaded.batching]
        self.plan = BatchPlan(
            self.data.train,
            self.global_micro_batch,
            cfg.seed,
            order=order,
            layout=layout,
            pad_id=self.pad_id,
        )
        if found is not None:
            self._restore_adapter(*found)
        self.parallel: Parallel = wrap(self.model, self._loss, self.group, mode, self.device)
        self.params = self.parallel.trainable()
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, self.total_steps, self.warmup, cfg.optim.scheduler),
        )
        self.state.global_micro_batch = self.global_micro_batch
        self.state.batching = loaded.batching
        if found is not None:
            self._restore(*found)
        else:
            # The dropout stream of a fresh run depends on the seed (and the process) alone,
            # not on what loading the model happened to draw.
            torch.manual_seed(cfg.seed + 1 + 7919 * self.group.rank)

    def _parallel_mode(self) -> str:
        return self.topology.parallel if self.topology is not None else self.config.parallel

    def _digest(self) -> bytes:
        """What every process of a run must agree on: settings, data and model."""
        seen = hashlib.sha256(self.config.to_json().encode())
        seen.update(self.spec.dataset_sha256.encode())
        seen.update(str(len(self.data.train)).encode())
        seen.update(Path(self.spec.model_dir).name.encode())
        return seen.digest()

    def _estimate(self, model_dir: Path, bf16: bool) -> None:
        """The estimate of one process (DDP replica or FSDP shard), sized from the data."""
        from appliance.training.device_estimate import per_device
        from appliance.training.estimate import estimate_memory

        # Without an estimate, keep_matmuls=auto keeps nothing (the memory it needs is unknown).
        self.keep_matmuls = (
            self.config.gradient_checkpointing and self.config.speed.keep_matmuls == "on"
        )
        if self.cuda:
            self.free_at_start = int(torch.cuda.mem_get_info()[0])
        try:
            model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            self.model_config = model_config
            estimate = estimate_memory(
                model_config,
                self.config,
                device="cuda" if self.cuda else "cpu",
                bf16_supported=bf16,
                lengths=[len(e.input_ids) for e in self.data.train],
                budget=self._memory_budget(),
                labelled=[sum(t != IGNORE for t in e.labels[1:]) for e in self.data.train],
            )
            self.keep_matmuls = estimate.kept_matmuls
            estimate = per_device(
                estimate,
                model_config,
                self.config,
                self.group.world_size,
                self._parallel_mode() if self.group.distributed else "ddp",
            )
            self.estimate = estimate.to_dict()
        except (OSError, ValueError, TrainingError) as exc:
            log.warning("no memory estimate for this model: %s", exc)
            self.model_config = {}

    def _memory_budget(self) -> int | None:
        """Memory free for this process at the start (GPU or RAM); None with several processes,
        which must not decide ``speed.keep_matmuls=auto`` each on its own free memory."""
        if self.group.distributed:
            return None
        if self.cuda:
            return self.free_at_start
        return available_ram()

    def _restore_adapter(self, name: str, snap: ckpt.Snapshot) -> None:
        """The checkpoint's LoRA weights, loaded before the model is wrapped (FSDP shards them)."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, snap.lora)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if "lora_" in k]
        if unexpected:
            raise TrainingError(
                f"checkpoint {name} does not fit this model ({unexpected[0]}); the run's model "
                "or settings changed since it was saved"
            )

    def _restore(self, name: str, snap: ckpt.Snapshot) -> None:
        self.parallel.load_optimizer_state(self.optimizer, snap.optimizer)
        self.scheduler.load_state_dict({**snap.scheduler, "lr_lambdas": [None]})
        if not snap.state.data_position and snap.state.step:
            # Saved before the position was recorded: it was always step x accumulation.
            accum = self.config.schedule.gradient_accumulation_steps
            snap.state.data_position = snap.state.step * accum
        snap.state.global_micro_batch = self.global_micro_batch
        snap.state.batching = self.state.batching
        self.state = snap.state
        self._saved_step = snap.state.step
        self._resumed_from = name
        ckpt.restore_rng(snap.rng)  # last: nothing after this may draw random numbers
        rank = self.group.rank
        if snap.state.world_size == self.group.world_size and rank < len(snap.rank_rng):
            torch.set_rng_state(snap.rank_rng[rank])  # each process goes on with its own stream
        elif rank > 0:
            # Another number of processes than the one that saved: a stream of its own.
            torch.manual_seed(self.config.seed + 1 + 7919 * rank + 104729 * snap.state.step)
        log.info(
            "resumed from checkpoint %s at step %d (saved by %d process(es), now %d)",
            name,
            snap.state.step,
            snap.state.world_size,
            self.group.world_size,
        )

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> str:
        """Train to the end (``"finished"``) or until a stop request (``"stopped"``)."""
        self._launch_start = time.perf_counter()
        trainable, total = self.model.get_nb_trainable_parameters()
        self.events.emit(
            ev.Started(
                run_id=self.run_id,
                model=self.spec.model,
                dataset=self.spec.dataset_ref,
                device=self.device,
                trainable_params=int(trainable),
                total_params=int(total),
                total_steps=self.total_steps,
                start_step=self.state.step,
                train_examples=len(self.data.train),
                dropped_examples=self.data.dropped + self.data.truncated,
                estimate=self.estimate,
                pid=os.getpid(),
                batching=self.paths.batching,
                padding_share=self._padding_shares(),
                loss_path="chunked" if self.paths.chunked_loss else "logits",
                attention=self.paths.attention,
                recompute=self.paths.recompute,
                **self._placement_fields(),
            )
        )
        if self.state.step == 0 and self._resumed_from is None:
            self._evaluate()  # the base model's eval loss, to compare the adapter against
        recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=RECENT)
        sched = self.config.schedule
        self.model.train()
        while self.state.step < self.total_steps and not self.group.any(self.stop_requested):
            t0 = time.perf_counter()
            lr = float(self.optimizer.param_groups[0]["lr"])
            result = self._train_step(self.state.step)
            loss = result.loss
            self.state.step += 1
            step = self.state.step
            self.state.tokens_seen += result.real_tokens
            self.state.recent_losses = ([*self.state.recent_losses, loss])[-RECENT:]
            recent.append((time.perf_counter() - t0, result.real_tokens))
            seconds = sum(s for s, _ in recent)
            self.events.emit(
                ev.Step(
                    run_id=self.run_id,
                    step=step,
                    total_steps=self.total_steps,
                    epoch=self.plan.epoch_at(self.state.data_position),
                    loss=loss,
                    lr=lr,
                    tokens_per_s=sum(t for _, t in recent) / seconds if seconds else 0.0,
                    eta_s=seconds / len(recent) * (self.total_steps - step),
                    grad_norm=result.grad_norm,
                    tokens_seen=self.state.tokens_seen,
                    label_tokens=result.label_tokens,
                    padding_share=1.0 - result.real_tokens / result.computed_tokens,
                )
            )
            for hook in self.step_hooks:
                hook(step)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {loss} at step {step}: the run diverged; "
                    "lower the learning rate (--set lr=...) and start a new run"
                )
            if sched.eval_every and step % sched.eval_every == 0 and step < self.total_steps:
                self._evaluate()
            if sched.save_every and step % sched.save_every == 0 and step < self.total_steps:
                self._save()
        if self.state.step < self.total_steps:
            name = self._save() if self._saved_step != self.state.step else self._last_name()
            self.events.emit(ev.Stopped(run_id=self.run_id, step=self.state.step, checkpoint=name))
            return "stopped"
        return self._finish()

    def _placement_fields(self) -> dict[str, Any]:
        """The ``started`` event's description of the processes (lineage keeps it)."""
        sched = self.config.schedule
        world = self.group.world_size
        topo = self.topology
        if topo is not None and topo.device == "cuda":
            pairs = zip(topo.gpu_indices, topo.device_names, strict=True)
            local = [f"cuda:{i} ({n})" for i, n in pairs]
        else:
            local = ["cpu"] * (topo.nproc_per_node if topo is not None else 1)
        nnodes = topo.nnodes if topo is not None else 1
        devices = [f"node {n}: {d}" for n in range(nnodes) for d in local] if nnodes > 1 else local
        return {
            "world_size": world,
            "nnodes": nnodes,
            "node_rank": self.group.node_rank,
            "backend": self.group.backend,
            "parallel": self.parallel.mode if self.group.distributed else None,
            "devices": devices,
            "global_batch": self.global_micro_batch * sched.gradient_accumulation_steps,
        }

    def _padding_shares(self) -> list[float]:
        """Padding share of each epoch the run touches (the ``started`` event reports it), as
        the processes compute it: each its share of every global micro-batch."""
        accum = self.config.schedule.gradient_accumulation_steps
        epochs = math.ceil(self.total_steps * accum / self.plan.per_epoch)
        split = every_share(self.group.world_size, self.config.schedule.micro_batch_size)
        return [round(self.plan.padding_share(e, split), 4) for e in range(epochs)]

    def _loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
        """(sum of token losses, label tokens) of ``batch`` on ``model``: chunked where the
        model allows (:func:`~appliance.training.loss.causal_lm_loss`)."""
        return causal_lm_loss(model, batch, chunked=self.paths.chunked_loss)

    def _train_step(self, step_index: int) -> StepResult:  # noqa: ARG002 (tests patch by index)
        """Optimizer step ``step_index`` (0-based) over the next ``accum`` global micro-batches
        of the plan (the data position is the checkpointed ``state.data_position``), this
        process's share of each; the loss is per label token of the whole global batch (see
        :func:`appliance.training.parallel.train_step`)."""
        sched = self.config.schedule
        accum = sched.gradient_accumulation_steps
        start = self.state.data_position
        shares = share_batches(
            [self.plan.micro_batch(m) for m in range(start, start + accum)],
            self.group,
            sched.micro_batch_size,
        )
        result = train_step(
            self.parallel,
            [self.plan.assemble(examples) for examples in shares],
            self.device,
            self.params,
            self.optimizer,
            self.scheduler,
            self.config.optim.max_grad_norm,
        )
        self.state.data_position = start + accum
        if self.trim_memory:
            allocator.trim()
        return result

    def _evaluate(self) -> float | None:
        """Loss per token on the eval split (None without one); training resumes after."""
        examples = self.data.eval
        if not examples:
            return None
        size = self.config.schedule.micro_batch_size
        # Longest first: similar lengths share a batch (the order does not change the loss).
        examples = sorted(examples, key=lambda e: -len(e.input_ids))
        starts = list(range(0, len(examples), size))
        group = self.group
        # Shared out batch by batch; under FSDP every process must run as many forward passes
        # (each gathers the shards), so one short of a batch repeats one and counts nothing.
        mine = starts[group.rank :: group.world_size]
        rounds = -(-len(starts) // group.world_size) if self.parallel.mode == "fsdp" else len(mine)
        total, tokens = 0.0, 0
        self.model.eval()
        with torch.no_grad():
            for round_ in range(rounds):
                start = mine[round_] if round_ < len(mine) else starts[0]
                batch = collate(examples[start : start + size], self.pad_id)
                loss_sum, count = self.parallel.eval_loss(batch.to(self.device))
                if round_ < len(mine):
                    total += float(loss_sum)
                    tokens += count
        self.model.train()
        total, tokens_sum = group.sum([total, tokens])
        tokens = int(tokens_sum)
        if self.config.method == "qlora":
            from appliance.training.quant import check_not_repacked

            # The bitsandbytes CPU trap (docs/engineering-notes.md) never sprang.
            check_not_repacked(self.model)
        loss = total / tokens
        self.state.last_eval_loss = loss
        self._last_eval_step = self.state.step
        self.events.emit(
            ev.Eval(
                run_id=self.run_id,
                step=self.state.step,
                eval_loss=loss,
                eval_examples=len(examples),
            )
        )
        return loss

    def snapshot(self) -> ckpt.Snapshot:
        """The state to checkpoint (every process calls it: it gathers what is spread out)."""
        state = ckpt.TrainerState(**asdict(self.state))
        state.wall_s += time.perf_counter() - self._launch_start
        state.world_size = self.group.world_size
        return ckpt.Snapshot(
            state=state,
            lora=self.parallel.lora_state(),
            optimizer=self.parallel.optimizer_state(self.optimizer),
            scheduler=self.scheduler.state_dict(),
            rng=ckpt.capture_rng(),
            rank_rng=self.group.gather_bytes(torch.get_rng_state())
            if self.group.distributed
            else [],
        )

    def _save(self) -> str:
        snapshot = self.snapshot()
        name, size = ckpt.checkpoint_name(self.state.step), None
        if self.group.writes_checkpoints:
            name, size = ckpt.save(
                self.run_dir / CHECKPOINTS_DIR,
                self.run_key,
                snapshot,
                self.config.schedule.keep_last,
            )
            self.events.emit(
                ev.Checkpoint(run_id=self.run_id, step=self.state.step, name=name, bytes=size)
            )
        # The others wait for the save: a failure right after it must find it complete.
        self.group.barrier()
        self._saved_step = self.state.step
        return name

    def _last_name(self) -> str | None:
        found = ckpt.checkpoints(self.run_dir / CHECKPOINTS_DIR)
        return found[-1].name if found else None

    def _finish(self) -> str:
        eval_loss = self.state.last_eval_loss
        if self._last_eval_step != self.state.step:
            eval_loss = self._evaluate()
        lora = self.parallel.lora_state()  # every process: FSDP gathers the shards
        if self.group.writes_checkpoints:
            config = adapters.config_to_json_dict(self.model.peft_config["default"])
            weights = adapters.AdapterWeights(
                config, {k: v.detach().to("cpu").contiguous() for k, v in lora.items()}
            )
            write_object(
                self.run_dir / ADAPTER_FILE,
                self.run_key,
                new_object_id(),
                [adapters.pack(weights)],
            )
        self.group.barrier()
        launch_s = time.perf_counter() - self._launch_start
        losses = self.state.recent_losses
        self.events.emit(
            ev.Finished(
                run_id=self.run_id,
                step=self.state.step,
                train_loss=sum(losses) / len(losses) if losses else None,
                eval_loss=eval_loss,
                tokens_seen=self.state.tokens_seen,
                wall_s=launch_s,
                total_wall_s=self.state.wall_s + launch_s,
                peak_memory=peak_memory(self.device),
                adapter=f"{self.spec.run_id}/{ADAPTER_FILE}"
                if self.group.writes_checkpoints
                else None,
            )
        )
        return "finished"
