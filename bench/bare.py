"""The baseline: the LoRA/QLoRA loop a practitioner writes with transformers + peft + bitsandbytes.

No appliance code on the training path: the model is loaded the documented way
(``BitsAndBytesConfig`` NF4 + double quantisation, ``prepare_model_for_kbit_training``,
``get_peft_model``), batches are shuffled with a seeded generator and right-padded to their
longest example, the loss is the model's own (``labels=``: whole logits, mean over each
micro-batch's label tokens, divided by the accumulation steps), AdamW with a warm-up + cosine
schedule and gradient clipping. It is what the appliance is measured against, side by side.

Used two ways:

* as a program (``python bench/bare.py --model-dir DIR --data FILE.jsonl ...``) by
  ``bench/train.py`` on the CPU: it tokenises a chat JSONL itself (labels on the last assistant
  reply) and prints one JSON line per step and a summary line;
* as a module by ``bench/gpu_check.py``, on token ids it makes itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

START = time.time()
IGNORE = -100


def vm_hwm() -> int:
    """Peak resident memory of this process in bytes (Linux VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def load_model(
    model_dir: Path,
    *,
    method: str,
    dtype: Any,
    device_map: Any,
    checkpointing: bool,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: str | list[str] = "all-linear",
) -> Any:
    """Base + LoRA, the way the peft and bitsandbytes documentation shows it."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if method == "qlora":
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            ),
            dtype=dtype,
            device_map=device_map,
        )
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device_map)
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            model.enable_input_require_grads()
    model.config.use_cache = False
    torch.manual_seed(0)
    return get_peft_model(
        model,
        LoraConfig(
            r=rank,
            lora_alpha=alpha,  # type: ignore[arg-type]
            lora_dropout=dropout,
            target_modules=target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )


def pad_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest example, as ``DataCollatorForSeq2Seq`` does."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(
    examples: Sequence[dict[str, list[int]]], size: int, seed: int, pad_id: int
) -> Iterator[dict[str, Any]]:
    """Endless shuffled, padded micro-batches: a new seeded permutation each epoch."""
    import torch

    epoch = 0
    while True:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(order), size):
            yield pad_batch([examples[i] for i in order[start : start + size].tolist()], pad_id)
        epoch += 1


def train(
    model: Any,
    data: Iterator[dict[str, Any]],
    *,
    steps: int,
    accumulation: int,
    lr: float,
    warmup: int,
    max_grad_norm: float,
    device: Any,
    on_step: Callable[[dict[str, Any]], None],
) -> None:
    """The loop: loss / accumulation, backward, clip, step, schedule."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    model.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        total, real = 0.0, 0
        for _ in range(accumulation):
            batch = {k: v.to(device) for k, v in next(data).items()}
            loss = model(**batch).loss / accumulation
            loss.backward()
            total += loss.item()
            real += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        on_step(
            {
                "step": step,
                "loss": total,
                "real_tokens": real,
                "seconds": time.perf_counter() - t0,
                "time": time.time(),
            }
        )


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], limit: int) -> dict[str, list[int]]:
    """Labels on the last assistant reply: the full text minus the prompt the template writes."""
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:limit]
    labels = [IGNORE] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids) :]
    return {"input_ids": ids, "labels": labels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="chat JSONL ({'messages': ...})")
    parser.add_argument("--method", choices=("qlora", "lora"), default="qlora")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line]
    examples = [encode_chat(tokenizer, r["messages"], args.max_seq_length) for r in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = load_model(
        args.model_dir,
        method=args.method,
        dtype=torch.float32,
        device_map="cpu",
        checkpointing=args.checkpointing,
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
    )
    torch.manual_seed(args.seed + 1)
    losses: list[float] = []

    def report(step: dict[str, Any]) -> None:
        losses.append(step["loss"])
        print(json.dumps(step), flush=True)

    train(
        model,
        batches(examples, args.micro_batch, args.seed, pad_id),
        steps=args.steps,
        accumulation=args.accumulation,
        lr=args.lr,
        warmup=args.warmup,
        max_grad_norm=1.0,
        device="cpu",
        on_step=report,
    )
    summary = {"summary": True, "start": START, "peak_rss": vm_hwm(), "losses": losses}
    print(json.dumps(summary), flush=True)
    return 0 if all(math.isfinite(x) for x in losses) else 1


if __name__ == "__main__":
    sys.exit(main())
