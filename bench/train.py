"""``appliance train`` against the bare transformers + peft + bitsandbytes loop, side by side.

    .venv/bin/python bench/train.py                 # SmolLM2-135M QLoRA on the facts data, CPU
    .venv/bin/python bench/train.py --method lora --reps 3 --steps 20

A is the whole product path: ``appliance train`` (the CLI parent, the training child, the
encrypted dataset decrypted in memory, the event stream, an encrypted checkpoint, the encrypted
adapter and its registry record). B is ``bench/bare.py``: the loop a practitioner writes, with
the same model, data, settings, seed and dtype (fp32 on the CPU), one torch thread each.
They run alternately, A B A B..., and the table gives medians:

* real tokens/s: tokens that are not padding, trained per second from the first step's end to
  the last's (checkpoint saves included for A);
* time to first step: from starting the process to the end of the first optimizer step;
* peak RSS of the training process (the child for A);
* final loss: the mean training loss over the run's steps.

Then each of the appliance's optimisations is turned off in turn (``--set``) to show its own gain,
measured in the same way in single runs, and the bare loop is run with two torch threads to keep
the one-thread decision measured. ``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import demo_home  # noqa: E402

ABLATIONS = {
    # name: the --set that turns one optimisation off, for a whole `appliance train` run
    "glibc memory release off": ["release_memory=false"],
    "full recompute (keep_matmuls off)": ["keep_matmuls=off"],
    "peft's LoRA forward (fused_lora off)": ["fused_lora=false"],
    "bitsandbytes' layers, per-operator policy (own_matmuls off)": ["own_matmuls=false"],
}


@dataclass(frozen=True)
class Variant:
    """One way of running the step, for the in-process timing."""

    batching: str = "grouped"
    chunked: bool = True
    """The loss from the labelled rows' hidden states, in chunks (else the model's whole logits)."""
    fast_dropout: bool = True
    stock_loss: bool = False
    """The model's own loss (transformers' ``labels=``)."""
    keep: bool = True
    """The frozen projections' outputs kept (only with checkpointing on)."""
    own: bool = True
    """The frozen projections through ``frozen_matmul`` (else bitsandbytes' and torch's layers
    and, with ``keep``, selective checkpointing's per-operator policy)."""
    fused: bool = True
    """LoRA's product added inside one matmul (else peft's forward)."""


BARE = Variant("padded", False, False, True, keep=False, own=False, fused=False)
"""The bare loop's step: padded random batches, whole logits, torch's dropout and the model's
loss, full recompute, bitsandbytes' and peft's layers."""

VARIANTS = {
    "appliance (all on)": Variant(),
    "full recompute": Variant(keep=False),
    "random order, padded": Variant(batching="padded"),
    "packed rows": Variant(batching="packed"),
    "whole-logits loss": Variant(chunked=False),
    "torch dropout": Variant(fast_dropout=False),
    "bitsandbytes' layers, per-operator policy": Variant(own=False),
    "peft's LoRA forward": Variant(fused=False),
    "bare: stock loss, padded, torch dropout, full recompute, stock layers": BARE,
}


def settings(args: argparse.Namespace) -> list[str]:
    """The ``--set`` assignments of the compared run (the bare loop gets the same values)."""
    return [
        f"method={args.method}",
        f"rank={args.rank}",
        f"alpha={2 * args.rank}",
        "target_modules=all-linear",
        "dropout=0.05",
        f"micro_batch_size={args.micro_batch}",
        f"gradient_accumulation_steps={args.accumulation}",
        f"max_steps={args.steps}",
        f"max_seq_length={args.max_seq_length}",
        f"lr={args.lr}",
        "warmup_ratio=0",
        "scheduler=cosine",
        f"gradient_checkpointing={'true' if args.checkpointing else 'false'}",
        f"seed={args.seed}",
        "eval_every=0",
        f"save_every={max(1, args.steps // 2)}",
    ]


def steady(steps: list[dict[str, Any]]) -> float:
    """Real tokens per second from the end of the first step to the end of the last."""
    if len(steps) < 2:
        return steps[0]["real_tokens"] / steps[0]["seconds"] if steps else 0.0
    tokens = sum(s["real_tokens"] for s in steps[1:])
    return tokens / (steps[-1]["time"] - steps[0]["time"])


def run_appliance(
    home: Path, args: argparse.Namespace, extra: list[str], tag: str
) -> dict[str, Any]:
    """One ``appliance train`` run; figures from its events."""
    sets = [x for a in [*settings(args), *extra] for x in ("--set", a)]
    started = time.time()
    proc = demo_home.appliance(
        home,
        "train",
        "--model",
        demo_home.MODEL,
        "--dataset",
        demo_home.DATASET,
        "--adapter",
        f"bench-{tag}",
        "--preset",
        "balanced",
        *sets,
    )
    run_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("Run "))
    shown = json.loads(demo_home.appliance(home, "run", "show", run_id, "--json").stdout)
    events = shown["events"]
    steps = []
    previous = None
    for event in events:
        if event["type"] == "step":
            seen = event["tokens_seen"]
            real = seen - (previous or 0)
            previous = seen
            steps.append(
                {"step": event["step"], "loss": event["loss"], "real_tokens": real,
                 "time": event["time"], "seconds": real / max(event["tokens_per_s"], 1e-9)}
            )  # fmt: skip
    first = next(e for e in events if e["type"] == "started")
    finished = next(e for e in events if e["type"] == "finished")
    return {
        "tokens_per_s": steady(steps),
        "first_step_s": steps[0]["time"] - started,
        "peak_rss": finished["peak_memory"],
        "final_loss": statistics.fmean(s["loss"] for s in steps),
        "padding_share": first.get("padding_share"),
        "batching": first.get("batching"),
        "loss_path": first.get("loss_path"),
        "recompute": first.get("recompute"),
        "estimate": (first.get("estimate") or {}).get("total_bytes"),
        "wall_s": time.time() - started,
    }


def run_bare(model_dir: Path, args: argparse.Namespace, threads: int = 1) -> dict[str, Any]:
    """One run of bench/bare.py in its own process."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "bare.py"),
        "--model-dir", str(model_dir),
        "--data", str(demo_home.DATA_FILE),
        "--method", args.method,
        "--rank", str(args.rank),
        "--alpha", str(2 * args.rank),
        "--micro-batch", str(args.micro_batch),
        "--accumulation", str(args.accumulation),
        "--steps", str(args.steps),
        "--max-seq-length", str(args.max_seq_length),
        "--lr", str(args.lr),
        "--seed", str(args.seed),
        "--threads", str(threads),
    ] + (["--checkpointing"] if args.checkpointing else [])  # fmt: skip
    started = time.time()
    proc = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": ""}
    )
    if proc.returncode != 0:
        raise SystemExit(f"bare loop failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    steps = [line for line in lines if "step" in line]
    summary = next(line for line in lines if line.get("summary"))
    return {
        "tokens_per_s": steady(steps),
        "first_step_s": steps[0]["time"] - started,
        "peak_rss": summary["peak_rss"],
        "final_loss": statistics.fmean(summary["losses"]),
        "wall_s": time.time() - started,
    }


def kernels_child(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Each optimisation on and off in one process: CPU seconds and wall seconds per real token.

    One model is loaded; the variants take turns (round-robin, ``args.rounds`` rounds of
    ``args.round_steps`` steps), so drift in the machine's load falls on all of them alike.
    Process CPU time is the steadier measure on a shared machine; wall time is shown too.
    """
    import torch
    from transformers import AutoTokenizer

    from appliance.training.batching import BatchPlan
    from appliance.training.dropout import FastDropout
    from appliance.training.frozen_matmul import frozen_forward
    from appliance.training.lora_forward import fused_forward
    from appliance.training.loss import causal_lm_loss
    from appliance.training.model import MODES, enable_checkpointing, load_for_training
    from appliance.training.settings import build_config
    from appliance.training.steps import train_step

    torch.set_num_threads(1)
    config = build_config("balanced", settings(args))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = demo_home.train_examples(tokenizer, config)
    pad_id = tokenizer.pad_token_id or 0
    torch.manual_seed(args.seed)
    loaded = load_for_training(
        model_dir, config, cuda=False, dtype=torch.float32, keep_matmuls=args.checkpointing
    )
    model = loaded.model
    base = model.get_base_model()
    dropouts = []  # (container, name, fast module, torch module)
    for module in model.modules():
        container = getattr(module, "lora_dropout", None)
        if isinstance(container, torch.nn.ModuleDict):
            for name, dropout in container.items():
                if isinstance(dropout, FastDropout):
                    dropouts.append((container, name, dropout, torch.nn.Dropout(dropout.p)))
    patched = {  # the layers given the appliance's own forwards, by that forward
        function: [m for m in model.modules() if getattr(m.forward, "__func__", None) is function]
        for function in (frozen_forward, fused_forward)
    }

    def use(function: Any, on: bool) -> None:
        for module in patched[function]:
            if on:
                module.forward = types.MethodType(function, module)
            else:
                vars(module).pop("forward", None)  # the class's forward again

    plans = {
        mode: BatchPlan(
            examples, args.micro_batch, args.seed, order=order, layout=layout, pad_id=pad_id
        )
        for mode, (order, layout) in MODES.items()
    }
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    def stock_loss(m: Any, batch: Any) -> tuple[Any, int]:
        count = batch.trained_tokens
        return m(**batch.model_inputs(), labels=batch.labels).loss * count, count

    timings: dict[str, list[tuple[float, float, int]]] = {name: [] for name in VARIANTS}
    threads2: list[tuple[float, int]] = []
    position = 0
    accum = args.accumulation
    for _ in range(args.rounds):
        for name, variant in VARIANTS.items():
            for container, key, fast_module, torch_module in dropouts:
                container[key] = fast_module if variant.fast_dropout else torch_module
            use(frozen_forward, variant.own)
            use(fused_forward, variant.fused)
            enable_checkpointing(
                base, args.checkpointing, keep_matmuls=variant.keep, recorded=variant.own
            )
            model.train()

            def loss_fn(m: Any, batch: Any, chunked: bool = variant.chunked) -> tuple[Any, int]:
                return causal_lm_loss(m, batch, chunked=chunked)

            for _ in range(args.round_steps):
                batches = [plans[variant.batching].batch(position + i) for i in range(accum)]
                cpu0, wall0 = time.process_time(), time.perf_counter()
                result = train_step(
                    model, batches, stock_loss if variant.stock_loss else loss_fn, "cpu", params,
                    optimizer, scheduler, 1.0,
                )  # fmt: skip
                timings[name].append(
                    (time.process_time() - cpu0, time.perf_counter() - wall0, result.real_tokens)
                )
            position += accum * args.round_steps
        torch.set_num_threads(2)
        for container, key, fast_module, _ in dropouts:
            container[key] = fast_module
        use(frozen_forward, True)
        use(fused_forward, True)
        enable_checkpointing(base, args.checkpointing, keep_matmuls=True, recorded=True)
        for _ in range(args.round_steps):
            batches = [plans["grouped"].batch(position + i) for i in range(accum)]
            wall0 = time.perf_counter()
            result = train_step(model, batches, loss_fn, "cpu", params, optimizer, scheduler, 1.0)
            threads2.append((time.perf_counter() - wall0, result.real_tokens))
        torch.set_num_threads(1)
        position += accum * args.round_steps
    out: dict[str, Any] = {}
    for name, runs in timings.items():
        tokens = sum(t for _, _, t in runs)
        out[name] = {
            "tokens_per_cpu_s": tokens / sum(c for c, _, _ in runs),
            "tokens_per_s": tokens / sum(w for _, w, _ in runs),
            "steps": len(runs),
        }
    out["appliance, 2 torch threads"] = {
        "tokens_per_s": sum(t for _, t in threads2) / sum(w for w, _ in threads2),
        "steps": len(threads2),
    }
    return out


def run_kernels(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`kernels_child` in a fresh process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--kernels-child", *args.argv]
    proc = subprocess.run(
        command, capture_output=True, text=True, check=False, env=demo_home.env(args.home)
    )
    if proc.returncode != 0:
        raise SystemExit(f"kernel timings failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=demo_home.DEFAULT_HOME)
    parser.add_argument("--method", choices=("qlora", "lora"), default="qlora")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--reps", type=int, default=2, help="A B pairs for the medians")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the in-process timing")
    parser.add_argument("--round-steps", type=int, default=2, help="steps per variant a round")
    parser.add_argument("--kernels-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "train.json")
    args = parser.parse_args(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--kernels-child"]
    if args.kernels_child:
        _, model_dir = demo_home.ensure(args.home)
        print(json.dumps(kernels_child(model_dir, args)))
        return 0

    home, model_dir = demo_home.ensure(args.home)
    appliance_runs: list[dict[str, Any]] = []
    bare_runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        appliance_runs.append(run_appliance(home, args, [], f"ab{rep}"))
        print(f"A {rep + 1}: {appliance_runs[-1]['tokens_per_s']:.1f} tokens/s", flush=True)
        bare_runs.append(run_bare(model_dir, args))
        print(f"B {rep + 1}: {bare_runs[-1]['tokens_per_s']:.1f} tokens/s", flush=True)
    ablations: dict[str, dict[str, Any]] = {}
    kernels: dict[str, Any] = {}
    if not args.no_ablations:
        for name, extra in ABLATIONS.items():
            ablations[name] = run_appliance(home, args, extra, "ablation")
            print(f"{name}: {ablations[name]['tokens_per_s']:.1f} tokens/s", flush=True)
        kernels = run_kernels(args)

    keys = ("tokens_per_s", "first_step_s", "peak_rss", "final_loss")
    a = {k: median(appliance_runs, k) for k in keys}
    b = {k: median(bare_runs, k) for k in keys}
    figures = {
        "cpu": cpu_name(),
        "settings": settings(args),
        "threads": 1,
        "appliance": a,
        "bare": b,
        "ratios": {
            "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
            "first_step_s": a["first_step_s"] / b["first_step_s"],
            "peak_rss": a["peak_rss"] / b["peak_rss"],
        },
        "appliance_runs": appliance_runs,
        "bare_runs": bare_runs,
        "ablations": ablations,
        "kernels": kernels,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print_table(figures, args)
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def print_table(figures: dict[str, Any], args: argparse.Namespace) -> None:
    a, b, r = figures["appliance"], figures["bare"], figures["ratios"]
    mib = 1024**2
    print(
        f"\nSmolLM2-135M {args.method}, micro-batch {args.micro_batch} x {args.accumulation}, "
        f"{args.steps} steps, checkpointing {'on' if args.checkpointing else 'off'}, fp32, "
        f"1 torch thread, CPU {figures['cpu']}; medians of {args.reps} A/B pairs"
    )
    print(f"{'':30}{'appliance train':>17}{'bare loop':>12}{'ratio':>8}")
    print(
        f"{'real tokens/s':30}{a['tokens_per_s']:17.1f}{b['tokens_per_s']:12.1f}"
        f"{r['tokens_per_s']:8.2f}"
    )
    print(
        f"{'time to first step (s)':30}{a['first_step_s']:17.1f}{b['first_step_s']:12.1f}"
        f"{r['first_step_s']:8.2f}"
    )
    print(
        f"{'peak RSS (MiB)':30}{a['peak_rss'] / mib:17.0f}{b['peak_rss'] / mib:12.0f}"
        f"{r['peak_rss']:8.2f}"
    )
    print(f"{'final loss (mean of steps)':30}{a['final_loss']:17.4f}{b['final_loss']:12.4f}")
    if figures["ablations"]:
        print(
            f"\n{'appliance train, one change':60}{'tokens/s':>10}{'vs A':>7}"
            f"{'peak MiB':>10}{'vs A':>7}"
        )
        for name, run in figures["ablations"].items():
            speed = run["tokens_per_s"] / a["tokens_per_s"]
            print(
                f"{name:60}{run['tokens_per_s']:10.1f}{speed:7.2f}"
                f"{run['peak_rss'] / mib:10.0f}{run['peak_rss'] / a['peak_rss']:7.2f}"
            )
    kernels = figures["kernels"]
    if kernels:
        ref = kernels["appliance (all on)"]
        print(
            f"\n{'training steps in one process, in turn':72}{'tok/CPU-s':>10}{'ratio':>7}"
            f"{'tok/s':>8}{'ratio':>7}"
        )
        for name, run in kernels.items():
            cpu = run.get("tokens_per_cpu_s")
            cpu_text = f"{cpu:10.1f}{cpu / ref['tokens_per_cpu_s']:7.2f}" if cpu else " " * 17
            print(
                f"{name:72}{cpu_text}{run['tokens_per_s']:8.1f}"
                f"{run['tokens_per_s'] / ref['tokens_per_s']:7.2f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
