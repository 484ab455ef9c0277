"""Where a CPU training step's time goes: torch.profiler over two steps of the demo model.

    .venv/bin/python bench/profile_step.py                 # the appliance's path
    .venv/bin/python bench/profile_step.py --bare          # the bare loop's loss and batches
    .venv/bin/python bench/profile_step.py --set method=lora --set gradient_checkpointing=false

SmolLM2-135M from the benchmark workspace (bench/demo_home.py), the facts data, one torch
thread. Prints the operators by their own CPU time (``--shapes`` groups them by input shape).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import demo_home  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=demo_home.DEFAULT_HOME)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--bare", action="store_true", help="stock loss, random padded batches")
    parser.add_argument("--shapes", action="store_true")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoTokenizer

    from appliance.training import allocator
    from appliance.training.batching import BatchPlan, Order
    from appliance.training.loss import causal_lm_loss
    from appliance.training.model import load_for_training
    from appliance.training.settings import build_config
    from appliance.training.steps import train_step

    torch.set_num_threads(1)
    _, model_dir = demo_home.ensure(args.home)
    config = build_config("balanced", ["micro_batch_size=4", "max_seq_length=256", *args.sets])
    if args.bare:
        config = build_config(
            "balanced",
            ["micro_batch_size=4", "max_seq_length=256", *args.sets, "batching=padded",
             "chunked_loss=false", "fast_dropout=false", "fused_lora=false",
             "own_matmuls=false"],
        )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = demo_home.train_examples(tokenizer, config)
    keep = not args.bare and config.gradient_checkpointing and config.speed.keep_matmuls != "off"
    loaded = load_for_training(
        model_dir, config, cuda=False, dtype=torch.float32, keep_matmuls=keep
    )
    if not args.bare and config.speed.release_memory:
        allocator.trim_between_layers(loaded.model)
    order: Order = "random" if args.bare else "grouped"
    plan = BatchPlan(examples, config.schedule.micro_batch_size, config.seed, order=order)
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    def loss_fn(model: Any, batch: Any) -> tuple[Any, int]:
        if args.bare:
            count = batch.trained_tokens
            return model(**batch.model_inputs(), labels=batch.labels).loss * count, count
        return causal_lm_loss(model, batch, chunked=loaded.chunked_loss)

    def step(index: int) -> None:
        train_step(loaded.model, [plan.batch(index)], loss_fn, "cpu", params, optimizer,
                   scheduler, 1.0)  # fmt: skip

    step(0)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        step(1)
        allocator.trim()  # as the training loop does after each optimizer step
        step(2)
    table = prof.key_averages(group_by_input_shape=args.shapes).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=45
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
