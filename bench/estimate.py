"""The pre-flight memory estimate against the measured peak, on the CPU, for several settings.

    .venv/bin/python bench/estimate.py          # SmolLM2-135M on the facts data, 4 settings

Each setting is a short ``appliance train`` run (2 optimizer steps, a checkpoint after the first)
of the demo model on the tests' facts data. The estimate is the one the run printed and put in
its ``started`` event: sized from the data's token lengths (the longest micro-batch the run can
form), with the process's runtime, model loading and checkpoint terms the CPU needs. The measured
figure is the training child's peak resident memory (VmHWM, in its ``finished`` event): on the
CPU, what can honestly be compared. The "blind" column is the estimate as it was before it read
the data: every micro-batch at max_seq_length, whole logits, tensors only. On a GPU the same
comparison runs in ``bench/gpu_check.py`` against torch's and NVML's peaks. ``--json FILE``
writes every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import demo_home  # noqa: E402

SETTINGS: dict[str, list[str]] = {
    "qlora b4 ckpt": ["method=qlora", "micro_batch_size=4", "gradient_checkpointing=true"],
    "qlora b16 no-ckpt": ["method=qlora", "micro_batch_size=16", "gradient_checkpointing=false"],
    "lora b4 ckpt": ["method=lora", "micro_batch_size=4", "gradient_checkpointing=true"],
    "lora b8 no-ckpt r64": [
        "method=lora",
        "micro_batch_size=8",
        "gradient_checkpointing=false",
        "rank=64",
        "alpha=128",
    ],
}
COMMON = [
    "target_modules=all-linear",
    "max_steps=2",
    "gradient_accumulation_steps=1",
    "max_seq_length=256",
    "eval_every=0",
    "save_every=1",
    "warmup_ratio=0",
    "seed=42",
]


def blind_estimate(model_dir: Path, sets: list[str]) -> int:
    """The estimate as it was before it read the data: max_seq_length, whole logits, tensors."""
    from appliance.training.estimate import estimate_memory
    from appliance.training.settings import build_config

    config = build_config("balanced", [*COMMON, *sets, "chunked_loss=false"])
    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return estimate_memory(model_config, config, device="cpu").allocated_bytes


def measure(home: Path, name: str, sets: list[str]) -> dict[str, Any]:
    args = [x for a in [*COMMON, *sets] for x in ("--set", a)]
    proc = demo_home.appliance(
        home, "train", "--model", demo_home.MODEL, "--dataset", demo_home.DATASET,
        "--adapter", "bench-estimate", "--preset", "balanced", *args,
    )  # fmt: skip
    run_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("Run "))
    events = json.loads(demo_home.appliance(home, "run", "show", run_id, "--json").stdout)["events"]
    started = next(e for e in events if e["type"] == "started")
    finished = next(e for e in events if e["type"] == "finished")
    estimate = started["estimate"]
    first_rss = next((e["rss"] for e in events if e["type"] == "memory" and e.get("rss")), None)
    return {
        "setting": name,
        "sets": sets,
        "estimate": estimate["total_bytes"],
        "items": {i["key"]: i["bytes"] for i in estimate["items"]},
        "tokens": estimate.get("tokens"),
        "sized_from": estimate.get("sized_from"),
        "peak_rss": finished["peak_memory"],
        "rss_after_setup": first_rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=demo_home.DEFAULT_HOME)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "estimate.json")
    args = parser.parse_args(argv)
    home, model_dir = demo_home.ensure(args.home)
    rows = []
    for name in args.settings:
        row = measure(home, name, SETTINGS[name])
        row["blind"] = blind_estimate(model_dir, SETTINGS[name])
        rows.append(row)
        print(f"{name}: estimate {row['estimate'] / 2**20:.0f} MiB, "
              f"peak {row['peak_rss'] / 2**20:.0f} MiB", flush=True)  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    mib = 2**20
    print(
        "\nSmolLM2-135M on the facts data (80 conversations of 50-64 tokens), max_seq_length 256, "
        "CPU, fp32"
    )
    print(
        f"{'setting':22}{'sized for':>10}{'estimate':>10}{'peak RSS':>10}{'est/meas':>9}"
        f"{'blind':>10}{'blind/meas':>11}"
    )
    for row in rows:
        print(
            f"{row['setting']:22}{row['tokens']:>10}{row['estimate'] / mib:9.0f}M"
            f"{row['peak_rss'] / mib:9.0f}M{row['estimate'] / row['peak_rss']:9.2f}"
            f"{row['blind'] / mib:9.0f}M{row['blind'] / row['peak_rss']:11.2f}"
        )
    worst = max(abs(r["estimate"] / r["peak_rss"] - 1) for r in rows)
    print(f"largest error: {worst:.0%} (aim: within 15%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
