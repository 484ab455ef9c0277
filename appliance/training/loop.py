"""The training loop of the child: model setup, steps, evaluation, checkpoints, the adapter.

A plain loop rather than HF Trainer, for full control over the event stream, memory readouts,
checkpoint contents and exact resumption. :class:`Trainer` is built from the run's spec, config,
run key and decrypted rows, and :meth:`Trainer.run` trains until the end or a stop request:

    setup  -> load tokenizer + model (4-bit for qlora), LoRA, AdamW, schedule, last checkpoint
    run    -> started, [eval at step 0], step..., eval every N, checkpoint every N,
              stopped (after a checkpoint) | final eval, adapter, finished
"""

from __future__ import annotations

import collections
import contextlib
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
from appliance.training.batching import Batch, BatchPlan, collate, total_steps
from appliance.training.config import TrainConfig
from appliance.training.data import tokenise
from appliance.training.loss import causal_lm_loss
from appliance.training.memory import process_peak_rss
from appliance.training.model import MODES, enable_checkpointing, load_for_training
from appliance.training.runfolder import ADAPTER_FILE, CHECKPOINTS_DIR, RunSpec
from appliance.training.steps import StepResult, train_step
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
    ) -> None:
        self.spec = spec
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_key = run_key
        self.rows = rows
        self.events = events
        self.cuda = torch.cuda.is_available()
        self.device = "cuda:0" if self.cuda else "cpu"
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
        sched = cfg.schedule
        self.total_steps = total_steps(
            BatchPlan(self.data.train, sched.micro_batch_size, cfg.seed),
            sched.epochs,
            sched.max_steps,
            sched.gradient_accumulation_steps,
        )
        self.warmup = cfg.optim.warmup_for(self.total_steps)
        self._estimate(model_dir, bf16)

        root = self.run_dir / CHECKPOINTS_DIR
        if ckpt.clean_partial(root):
            log.warning("removed the remains of a checkpoint save that was interrupted")
        # Read before the model loads: a resumed run keeps the batching its first session chose.
        found = ckpt.latest(root, self.run_key)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.trim_memory = cfg.speed.release_memory and not self.cuda
        with allocator.loading() if self.trim_memory else contextlib.nullcontext():
            loaded = load_for_training(
                model_dir,
                cfg,
                cuda=self.cuda,
                dtype=dtype,
                batching=(found[1].state.batching or None) if found is not None else None,
            )
        self.model = loaded.model
        self.paths = loaded
        order, layout = MODES[loaded.batching]
        self.plan = BatchPlan(
            self.data.train,
            sched.micro_batch_size,
            cfg.seed,
            order=order,
            layout=layout,
            pad_id=self.pad_id,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, self.total_steps, self.warmup, cfg.optim.scheduler),
        )
        self.state.batching = loaded.batching
        if found is not None:
            self._restore(*found)
        else:
            # The dropout stream of a fresh run depends on the seed alone, not on what loading
            # the model happened to draw.
            torch.manual_seed(cfg.seed + 1)

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
                lengths=[len(e.input_ids) for e in self.data.train],
            )
            self.estimate = estimate.to_dict()
        except (OSError, ValueError, TrainingError) as exc:
            log.warning("no memory estimate for this model: %s", exc)
            self.model_config = {}
        if self.cuda:
            self.free_at_start = int(torch.cuda.mem_get_info()[0])

    def _restore(self, name: str, snap: ckpt.Snapshot) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, snap.lora)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if "lora_" in k]
        if unexpected:
            raise TrainingError(
                f"checkpoint {name} does not fit this model ({unexpected[0]}); the run's model "
                "or settings changed since it was saved"
            )
        self.optimizer.load_state_dict(snap.optimizer)
        self.scheduler.load_state_dict({**snap.scheduler, "lr_lambdas": [None]})
        if not snap.state.data_position and snap.state.step:
            # Saved before the position was recorded: it was always step x accumulation.
            accum = self.config.schedule.gradient_accumulation_steps
            snap.state.data_position = snap.state.step * accum
        snap.state.batching = self.state.batching
        self.state = snap.state
        self._saved_step = snap.state.step
        self._resumed_from = name
        ckpt.restore_rng(snap.rng)  # last: nothing after this may draw random numbers
        log.info("resumed from checkpoint %s at step %d", name, snap.state.step)

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
                batching=self.paths.batching,
                padding_share=self._padding_shares(),
                loss_path="chunked" if self.paths.chunked_loss else "logits",
                attention=self.paths.attention,
            )
        )
        if self.state.step == 0 and self._resumed_from is None:
            self._evaluate()  # the base model's eval loss, to compare the adapter against
        recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=RECENT)
        sched = self.config.schedule
        self.model.train()
        while self.state.step < self.total_steps and not self.stop_requested:
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

    def _padding_shares(self) -> list[float]:
        """Padding share of each epoch the run touches (the ``started`` event reports it)."""
        accum = self.config.schedule.gradient_accumulation_steps
        epochs = math.ceil(self.total_steps * accum / self.plan.per_epoch)
        return [round(self.plan.padding_share(e), 4) for e in range(epochs)]

    def _loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
        return causal_lm_loss(model, batch, chunked=self.paths.chunked_loss)

    def _train_step(self, step_index: int) -> StepResult:  # noqa: ARG002 (tests patch by index)
        """Optimizer step ``step_index`` (0-based) over the next ``accum`` micro-batches of the
        plan (the data position is the checkpointed ``state.data_position``)."""
        accum = self.config.schedule.gradient_accumulation_steps
        start = self.state.data_position
        batches = [self.plan.batch(m) for m in range(start, start + accum)]
        result = train_step(
            self.model,
            batches,
            self._loss,
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
        total, tokens = 0.0, 0
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(examples), size):
                batch = collate(examples[start : start + size], self.pad_id)
                loss_sum, count = self._loss(self.model, batch.to(self.device))
                total += float(loss_sum)
                tokens += count
        self.model.train()
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
        from peft import get_peft_model_state_dict

        state = ckpt.TrainerState(**asdict(self.state))
        state.wall_s += time.perf_counter() - self._session_start
        return ckpt.Snapshot(
            state=state,
            lora={k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()},
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            rng=ckpt.capture_rng(),
        )

    def _save(self) -> str:
        name, size = ckpt.save(
            self.run_dir / CHECKPOINTS_DIR,
            self.run_key,
            self.snapshot(),
            self.config.schedule.keep_last,
        )
        self._saved_step = self.state.step
        self.events.emit(
            ev.Checkpoint(run_id=self.run_id, step=self.state.step, name=name, bytes=size)
        )
        return name

    def _last_name(self) -> str | None:
        found = ckpt.checkpoints(self.run_dir / CHECKPOINTS_DIR)
        return found[-1].name if found else None

    def _finish(self) -> str:
        eval_loss = self.state.last_eval_loss
        if self._last_eval_step != self.state.step:
            eval_loss = self._evaluate()
        weights = adapters.from_peft_model(self.model)
        write_object(
            self.run_dir / ADAPTER_FILE, self.run_key, new_object_id(), [adapters.pack(weights)]
        )
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
                adapter=f"{self.spec.run_id}/{ADAPTER_FILE}",
            )
        )
        return "finished"
