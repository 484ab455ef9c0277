"""The whole appliance path on a GPU: init, model import, dataset import, `appliance train`, export.

Where bench/gpu_check.py measures the training maths on random tokens, this runs the product as a
user does, through the CLI and the training child, so the CUDA path of the worker, its NVML
``memory`` events and a merge on a GPU machine are exercised for real. It writes the run's
``metrics.jsonl`` (a real GPU recording, replayed by the desktop app's tests) and the CLI output
to ``--out``. The model is a small random LLaMA with a locally trained tokenizer (no download).

    PYTHONPATH=. python bench/gpu_e2e.py --out bench/out/gpu_e2e
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli(home: Path, *args: str, log: list[str]) -> str:
    env = {**os.environ, "APPLIANCE_PASSPHRASE": "gpu e2e passphrase 1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "appliance", "--home", str(home), *args]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    log.append(f"$ appliance {' '.join(args)}   # {elapsed:.1f} s, exit {proc.returncode}")
    log.append(proc.stdout.rstrip())
    if proc.stderr.strip():
        log.append("[stderr] " + proc.stderr.strip()[-3000:])
    print("\n".join(log[-3:]), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"appliance {args[0]} failed with exit {proc.returncode}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/gpu_e2e")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from tests.helpers.models import build_tiny_llama

    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-e2e-") as tmp:
        model = build_tiny_llama(
            Path(tmp) / "model",
            hidden_size=512,
            layers=8,
            heads=8,
            kv_heads=4,
            intermediate_size=1536,
            vocab_size=384,
        )
        home = Path(tmp) / "ws"
        cli(home, "init", "--kdf-time", "0.1", log=log)
        cli(home, "gpu", log=log)
        cli(home, "model", "import", str(model), "--name", "small", log=log)
        data = ROOT / "tests/data/orgfacts/orgfacts.jsonl"
        cli(home, "dataset", "import", str(data), "--name", "orgfacts", log=log)
        cli(
            home,
            "train",
            "--model", "small",
            "--dataset", "orgfacts",
            "--adapter", "gpu-e2e",
            "--preset", "quick-test",
            "--set", f"max_steps={args.steps}",
            "--set", "micro_batch_size=4",
            "--set", "eval_every=10",
            "--set", "save_every=20",
            "--set", "max_seq_length=256",
            log=log,
        )  # fmt: skip
        cli(home, "run", "list", log=log)
        cli(home, "adapter", "show", "gpu-e2e", log=log)
        out_dir = Path(tmp) / "export"
        cli(home, "export", "gpu-e2e", "--format", "merged", "--out", str(out_dir), log=log)
        runs = sorted((home / "runs").iterdir())
        shutil.copy(runs[-1] / "metrics.jsonl", args.out / "metrics.jsonl")
    (args.out / "session.txt").write_text("\n".join(log) + "\n")
    print(f"\nwrote {args.out / 'metrics.jsonl'} and {args.out / 'session.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
