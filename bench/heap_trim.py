"""What trimming the heap between decoder layers costs and saves, in one training process.

    .venv/bin/python bench/heap_trim.py                      # none, every part, 16-128 MiB
    .venv/bin/python bench/heap_trim.py --variants none 64   # some of them

SmolLM2-135M QLoRA from the benchmark workspace (bench/demo_home.py), r16 all-linear, b=4, the
facts data, gradient checkpointing with the kept projection outputs, one torch thread: the
appliance's CPU path. Each variant runs in a fresh process (so each peak is its own): the model
is loaded, the step's peak RSS (VmHWM) is reset, then ``--steps`` steps run with the heap
trimmed after each (as the training loop does) and between the decoder layers' parts as the
variant says: never (``none``), before every part (``parts``), or once the resident size has
grown by N MiB (``N``, :class:`appliance.training.allocator.GrowthTrimmer`). Prints the step's
peak RSS, the trims and real tokens per CPU second (the first step, which allocates the
optimizer state, is not timed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import demo_home  # noqa: E402

VARIANTS = ("none", "parts", "16", "32", "64", "96", "128")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def child(variant: str, steps: int) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from appliance.training import allocator
    from appliance.training.batching import BatchPlan
    from appliance.training.loss import causal_lm_loss
    from appliance.training.model import MODES, load_for_training
    from appliance.training.settings import build_config
    from appliance.training.steps import train_step

    torch.set_num_threads(1)
    _, model_dir = demo_home.ensure()
    config = build_config(
        "balanced",
        ["method=qlora", "rank=16", "alpha=32", "target_modules=all-linear", "dropout=0.05",
         "micro_batch_size=4", "max_seq_length=256", "gradient_checkpointing=true", "seed=42"],
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = demo_home.train_examples(tokenizer, config)
    torch.manual_seed(42)
    with allocator.loading():
        loaded = load_for_training(
            model_dir, config, cuda=False, dtype=torch.float32, keep_matmuls=True
        )
    model = loaded.model
    trimmer = None
    if variant == "parts":
        trimmer = allocator.trim_between_layers(model, 0, lambda: None)  # unknown: always
    elif variant != "none":
        trimmer = allocator.trim_between_layers(model, int(variant) * 2**20)
    order, layout = MODES[loaded.batching]
    plan = BatchPlan(examples, 4, 42, order=order, layout=layout, pad_id=tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    allocator.trim()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
    cpu, tokens = 0.0, 0
    for index in range(steps):
        started = time.process_time()
        result = train_step(
            model, [plan.batch(index)], lambda m, b: causal_lm_loss(m, b, chunked=True), "cpu",
            params, optimizer, scheduler, 1.0,
        )  # fmt: skip
        allocator.trim()
        if index:
            cpu += time.process_time() - started
            tokens += result.real_tokens
    return {
        "variant": variant,
        "step_peak_rss": _status("VmHWM:"),
        "trims": trimmer.trims if trimmer else 0,
        "tokens_per_cpu_s": tokens / cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return 0
    demo_home.ensure()
    print(f"{'trims between layer parts':28}{'step peak RSS':>15}{'trims':>7}{'tokens/CPU-s':>14}")
    for variant in args.variants:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--steps", str(args.steps)],
            capture_output=True, text=True, check=False, env=demo_home.env(demo_home.DEFAULT_HOME),
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        label = {"none": "none", "parts": "before every part"}.get(variant, f"grew {variant} MiB")
        print(
            f"{label:28}{row['step_peak_rss'] / 2**20:12.0f} MiB{row['trims']:7d}"
            f"{row['tokens_per_cpu_s']:14.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
