"""Data-parallel scaling on the CPU: tokens/s of 1 and 2 processes (gloo) on the same run.

    .venv/bin/python bench/scale.py                 # the tiny LLaMA of the tests, 1 vs 2 processes
    .venv/bin/python bench/scale.py --size small    # hidden 256, 4 layers: more compute a step
    .venv/bin/python bench/scale.py --processes 1 2 4 --steps 12

Each setting is a real run of the appliance (``runs.launch``: torchrun's agent for 2 or more
processes, the keys down stdin, the event stream), with the same global batch: 1 process x
micro-batch 2P x accumulation 2 against P processes x micro-batch 2 x accumulation 2. Throughput
is every process's tokens together per second, over the steps after the first, from the ``step``
events; the start-up (imports, model load, rendezvous) is reported apart. The adapters of the
runs are compared too (fp32, no dropout): data parallelism must not change the result.

On a machine with 2 cores, 2 processes compete with each other (and with the parent) for the
cores that one process with one thread leaves mostly idle; expect little gain there. The figure
to look at is the efficiency, tokens/s of P processes over P x tokens/s of one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import offline  # noqa: E402

offline.enforce()

from bench.parallel_runs import (  # noqa: E402
    adapter_tensors,
    chat_rows,
    make_workspace,
    max_difference,
    measure_run,
)


class Shape(TypedDict):
    """The size arguments of ``build_tiny_llama``."""

    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int


SIZES: dict[str, Shape] = {
    "tiny": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 128},
    "small": {"hidden_size": 256, "layers": 4, "heads": 8, "kv_heads": 4, "intermediate_size": 688},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--method", choices=["qlora", "lora"], default="qlora")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    from appliance.gpu import GpuState
    from appliance.training.placement import Placement, resolve_topology
    from appliance.training.settings import build_config
    from tests.helpers.models import build_tiny_llama

    widest = max(args.processes)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        model = build_tiny_llama(root / "model", **SIZES[args.size])
        # Enough examples for every step to draw fresh ones, divisible by every global batch.
        rows = chat_rows(widest * 4 * args.steps + widest * 4)
        vault = make_workspace(root, model, rows)
        for count in args.processes:
            config = build_config(
                "quick-test",
                [
                    f"method={args.method}",
                    f"max_steps={args.steps}",
                    f"micro_batch_size={2 * widest // count}",
                    "gradient_accumulation_steps=2",
                    "dropout=0",
                    "save_every=0",
                    "eval_every=0",
                    "max_seq_length=256",
                    "warmup_ratio=0",
                    "lr=1e-3",
                ],
            )
            topology = resolve_topology(Placement(processes=count), GpuState())
            measured = measure_run(vault, config, topology, f"p{count}", threads=1)
            if measured.state != "finished":
                print(f"{count} process(es): {measured.state}: {measured.message}", file=sys.stderr)
                return 1
            results.append({"processes": count, **measured.__dict__})
        reference = adapter_tensors(vault, results[0]["adapter"])
        for result in results[1:]:
            result["max_adapter_diff"] = max_difference(
                reference, adapter_tensors(vault, result["adapter"])
            )
    base = results[0]["tokens_per_s"]
    for result in results:
        result["speedup"] = result["tokens_per_s"] / base if base else None
        result["efficiency"] = result["speedup"] / result["processes"] if base else None
        result.pop("losses", None)
    cores = len(os.sched_getaffinity(0))
    if args.json:
        print(json.dumps({"size": args.size, "cores": cores, "results": results}, indent=2))
        return 0
    print(f"{args.size} LLaMA, {args.method}, {args.steps} steps, {cores} cores")
    header = ("processes", "tokens/s", "speedup", "efficiency", "wall s", "max diff")
    widths = (9, 10, 8, 10, 7, 9)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in results:
        diff = r.get("max_adapter_diff")
        print(
            f"{r['processes']:>9} {r['tokens_per_s']:>10.0f} {r['speedup']:>8.2f} "
            f"{r['efficiency']:>10.2f} {r['wall_s']:>7.1f} "
            f"{'' if diff is None else f'{diff:.1e}':>9}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
