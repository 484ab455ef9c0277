"""The training loop of the child: model setup, steps, evaluation, checkpoints, the adapter.

A plain loop rather than HF Trainer, for full control over the event stream, memory readouts,
checkpoint contents and exact resumption. :class:`Trainer` is built from the run's spec, config,
run key and decrypted rows, and :meth:`Trainer.run` trains until the end or a stop request:

    setup  -> load tokenizer + model (4-bit for qlora), LoRA, AdamW, schedule, last checkpoint
    run    -> started, [eval at step 0], step..., eval every N, checkpoint every N,
              stopped (after a checkpoint) | final eval, adapter, finished

With several processes (a :class:`~appliance.training.distributed.Group` from torchrun) the same
loop runs in each: the data order is that of one process with micro-batches of
``micro_batch_size x processes`` examples (the *global micro-batch*), each process takes its
share of every one, the model is wrapped by :mod:`appliance.training.parallel` (DDP or FSDP),
the processes agree on when to stop, evaluation is shared out, and only rank 0 writes
checkpoints and the adapter.
"""

from __future__ import annotations

import collections
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
import torch.nn.functional as F

from appliance import adapters
from appliance.datasets.canonical import Row
from appliance.errors import TrainingError
from appliance.training import checkpoint as ckpt
from appliance.training import events as ev
from appliance.training.config import TrainConfig
from appliance.training.data import IGNORE, Batch, BatchPlan, collate, tokenise, total_steps
from appliance.training.distributed import Group
from appliance.training.memory import process_peak_rss
from appliance.training.parallel import Parallel, check_shares, share_batches, train_step, wrap
from appliance.training.placement import Topology
from appliance.training.runfolder import ADAPTER_FILE, CHECKPOINTS_DIR, RunSpec
from appliance.vault.objects import new_object_id, write_object

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


def enable_checkpointing(model: Any, on: bool) -> None:
    """Gradient (activation) checkpointing on the base model, non-reentrant."""
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
    if on:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.enable_input_require_grads()
    else:
        disable = getattr(model, "activation_checkpointing_disable", None)
        (disable or model.gradient_checkpointing_disable)()


def peak_memory(device: str) -> int:
    """Torch's peak allocation on a GPU, the process's peak resident memory on CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return process_peak_rss() or 0


class Trainer:
    """One session of a run: set up, then train until done or asked to stop."""

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
        # Read before the plan: a resumed run keeps its first session's global micro-batch.
        found = ckpt.latest(root, self.run_key)
        self.global_micro_batch = (
            found[1].state.global_micro_batch
            if found is not None and found[1].state.global_micro_batch
            else sched.micro_batch_size * (self.group.world_size if found is None else 1)
        )
        check_shares(len(self.data.train), self.global_micro_batch, self.group)
        self.plan = BatchPlan(self.data.train, self.global_micro_batch, cfg.seed)
        self.total_steps = total_steps(
            self.plan, sched.epochs, sched.max_steps, sched.gradient_accumulation_steps
        )
        self.warmup = cfg.optim.warmup_for(self.total_steps)
        self._estimate(model_dir, bf16)

        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = self._load_model(model_dir, dtype)
        if found is not None:
            self._restore_adapter(*found)
        mode = self.topology.parallel if self.topology is not None else cfg.parallel
        self.parallel: Parallel = wrap(self.model, self._loss_of, self.group, mode, self.device)
        self.params = self.parallel.trainable()
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, self.total_steps, self.warmup, cfg.optim.scheduler),
        )
        self.state.global_micro_batch = self.global_micro_batch
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
        import hashlib

        seen = hashlib.sha256(self.config.to_json().encode())
        seen.update(self.spec.dataset_sha256.encode())
        seen.update(str(len(self.data.train)).encode())
        seen.update(Path(self.spec.model_dir).name.encode())
        return seen.digest()

    def _estimate(self, model_dir: Path, bf16: bool) -> None:
        from appliance.training.estimate import estimate_memory

        try:
            model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            self.model_config = model_config
            estimate = estimate_memory(
                model_config,
                self.config,
                device="cuda" if self.cuda else "cpu",
                bf16_supported=bf16,
            )
            self.estimate = estimate.to_dict()
        except (OSError, ValueError, TrainingError) as exc:
            log.warning("no memory estimate for this model: %s", exc)
            self.model_config = {}
        if self.cuda:
            self.free_at_start = int(torch.cuda.mem_get_info()[0])

    def _load_model(self, model_dir: Path, dtype: torch.dtype) -> Any:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        cfg = self.config
        device_map: Any = {"": self.device_index} if self.cuda else "cpu"
        if cfg.method == "qlora":
            from appliance.training.quant import load_4bit

            # FSDP shards the 4-bit weights only when they are stored in the compute dtype.
            fsdp = self._parallel_mode() == "fsdp" and self.group.distributed
            model = load_4bit(
                model_dir, dtype, device_map=device_map, quant_storage=dtype if fsdp else None
            )
            if fsdp:
                # No fp32 upcast of the frozen 16-bit weights: an FSDP unit holds one dtype, and
                # the 4-bit weights are stored in the compute dtype beside them.
                for param in model.parameters():
                    param.requires_grad = False
            else:
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype=dtype,
                device_map=device_map,
                local_files_only=True,
                trust_remote_code=False,
            )
            for param in model.parameters():
                param.requires_grad = False
        model.config.use_cache = False
        enable_checkpointing(model, cfg.gradient_checkpointing)
        lora = cfg.lora
        torch.manual_seed(cfg.seed)  # the adapter's initial weights depend on the seed only
        return get_peft_model(
            model,
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft accepts floats
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                bias="none",
                task_type="CAUSAL_LM",
            ),
        )

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
        snap.state.global_micro_batch = self.global_micro_batch
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
        self._session_start = time.perf_counter()
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
            loss, grad_norm, tokens, lr = self._train_step(self.state.step)
            self.state.step += 1
            step = self.state.step
            self.state.tokens_seen += tokens
            self.state.recent_losses = ([*self.state.recent_losses, loss])[-RECENT:]
            recent.append((time.perf_counter() - t0, tokens))
            seconds = sum(s for s, _ in recent)
            self.events.emit(
                ev.Step(
                    run_id=self.run_id,
                    step=step,
                    total_steps=self.total_steps,
                    epoch=self.plan.epoch_at(step * sched.gradient_accumulation_steps),
                    loss=loss,
                    lr=lr,
                    tokens_per_s=sum(t for _, t in recent) / seconds if seconds else 0.0,
                    eta_s=seconds / len(recent) * (self.total_steps - step),
                    grad_norm=grad_norm,
                    tokens_seen=self.state.tokens_seen,
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

    def _train_step(self, step_index: int) -> tuple[float, float, int, float]:
        """One optimizer step over ``accum`` global micro-batches, this process's share of each;
        the loss is per label token of the whole global batch (see :func:`parallel.train_step`)."""
        sched = self.config.schedule
        accum = sched.gradient_accumulation_steps
        shares = share_batches(
            [self.plan.micro_batch(m) for m in range(step_index * accum, (step_index + 1) * accum)],
            self.group,
            sched.micro_batch_size,
        )
        batches = [collate(examples, self.pad_id) for examples in shares]
        lr = float(self.optimizer.param_groups[0]["lr"])
        done = train_step(
            self.parallel,
            batches,
            self.device,
            self.params,
            self.optimizer,
            self.scheduler,
            self.config.optim.max_grad_norm,
        )
        return done.loss, done.grad_norm, done.tokens, lr

    def _loss_of(self, model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
        """(sum of token losses, label tokens) of ``batch`` on ``model``."""
        return self._loss_sum(batch, model), batch.trained_tokens

    def _loss_sum(self, batch: Batch, model: Any = None) -> torch.Tensor:
        model = self.model if model is None else model
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        shifted = logits[:, :-1, :].float()
        labels = batch.labels[:, 1:]
        return F.cross_entropy(
            shifted.reshape(-1, shifted.size(-1)),
            labels.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )

    def _evaluate(self) -> float | None:
        """Loss per token on the eval split (None without one); training resumes after."""
        examples = self.data.eval
        if not examples:
            return None
        size = self.config.schedule.micro_batch_size
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

            check_not_repacked(self.model)  # the bitsandbytes CPU trap (FACTS.md) never sprang
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
        state.wall_s += time.perf_counter() - self._session_start
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
        session = time.perf_counter() - self._session_start
        losses = self.state.recent_losses
        self.events.emit(
            ev.Finished(
                run_id=self.run_id,
                step=self.state.step,
                train_loss=sum(losses) / len(losses) if losses else None,
                eval_loss=eval_loss,
                tokens_seen=self.state.tokens_seen,
                wall_s=session,
                total_wall_s=self.state.wall_s + session,
                peak_memory=peak_memory(self.device),
                adapter=f"{self.spec.run_id}/{ADAPTER_FILE}"
                if self.group.writes_checkpoints
                else None,
            )
        )
        return "finished"
