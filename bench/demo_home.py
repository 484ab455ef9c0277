"""A workspace for the CPU benchmarks: the demo model and the tests' facts data, made once.

``appliance model import --demo`` dequantises SmolLM2-135M-Instruct's GGUF to a safetensors
folder (about two minutes on our CPU), so the workspace is kept in ``bench/out/home`` and reused
by ``bench/train.py`` and ``bench/estimate.py``. The dataset is imported with no eval split, so
the appliance and the bare loop train on the same 80 conversations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = ROOT / "bench" / "out" / "home"
PASSPHRASE = "bench passphrase, not a secret"
MODEL = "smollm2-135m-instruct"
DATASET = "orgfacts"
DATA_FILE = ROOT / "tests" / "data" / "orgfacts" / "orgfacts.jsonl"


def train_examples(tokenizer: Any, config: Any) -> list[Any]:
    """The facts data's conversations tokenised as a run with ``config`` would (all train)."""
    from appliance.training.data import tokenise

    rows = [
        {**json.loads(line), "split": "train"}
        for line in DATA_FILE.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return list(tokenise(rows, tokenizer, config.data).train)


def env(home: Path) -> dict[str, str]:
    """The environment the ``appliance`` command runs in for the benchmarks."""
    return {
        **os.environ,
        "APPLIANCE_HOME": str(home),
        "APPLIANCE_PASSPHRASE": PASSPHRASE,
        "PYTHONPATH": str(ROOT),
    }


def appliance(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``appliance ARGS`` (this checkout's code) and return the finished process."""
    command = [sys.executable, "-m", "appliance", *args]
    proc = subprocess.run(command, env=env(home), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"appliance {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def ensure(home: Path = DEFAULT_HOME) -> tuple[Path, Path]:
    """The workspace (made if missing) and the demo model's folder in it."""
    marker = home / ".bench-ready"
    if not marker.exists():
        if home.exists() and any(home.iterdir()):
            raise SystemExit(f"{home} exists but was not made by the benchmarks; remove it")
        print(f"making the benchmark workspace in {home} (demo model import: ~2 min)", flush=True)
        appliance(home, "init")
        appliance(home, "model", "import", "--demo")
        appliance(
            home, "dataset", "import", str(DATA_FILE), "--name", DATASET, "--eval-fraction", "0"
        )
        marker.write_text("ok\n")
    listing = json.loads(appliance(home, "model", "show", MODEL, "--json").stdout)
    return home, model_dir(home, listing)


def model_dir(home: Path, row: dict[str, Any]) -> Path:
    path = Path(str(row.get("path") or ""))
    folder = path if path.is_absolute() else home / path
    if (folder / "files").is_dir():
        folder = folder / "files"
    if not (folder / "config.json").is_file():
        raise SystemExit(f"no model folder for {MODEL} under {home}: {row}")
    return folder
