"""Vault benchmark: decrypt + parse against plain read + parse, and import throughput.

Usage::

    .venv/bin/python bench/bench_vault.py [--mb 100] [--repeat 3]

Writes a synthetic chat JSONL of about ``--mb`` MB into a temporary folder (made-up text, not
user data), then measures, best of ``--repeat``:

- plain: read the file, decode UTF-8, ``json.loads`` every line;
- vault: open the same bytes stored as a vault object (authenticate every chunk), decode,
  ``json.loads`` every line;
- import: ``appliance.datasets.import_file`` of the source file (validate, normalise,
  deduplicate, split, encrypt, record), in MB of source per second.

Prints the ratio vault/plain (the aim is at most 1.25) and the import throughput.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import datasets, offline, workspace
from appliance.registry import Registry
from appliance.registry.rows import DatasetVersionRow
from appliance.vault import Vault, new_object_id, read_object, write_object

WORDS = [
    "contract",
    "clause",
    "liability",
    "party",
    "agreement",
    "notice",
    "term",
    "court",
    "damages",
    "payment",
    "invoice",
    "patient",
    "dose",
    "symptom",
    "diagnosis",
    "report",
    "account",
    "balance",
    "transfer",
    "audit",
    "risk",
    "policy",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "that",
    "for",
    "on",
    "with",
    "as",
    "by",
    "this",
    "be",
    "are",
]


def synthetic_jsonl(target_bytes: int, seed: int = 0) -> bytes:
    """Chat rows in OpenAI messages format, about ``target_bytes`` long."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    size = 0
    n = 0
    while size < target_bytes:
        question = " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(20, 200)))
        row = {
            "messages": [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": f"{n}: {question}?"},
                {"role": "assistant", "content": answer + "."},
            ]
        }
        line = json.dumps(row).encode() + b"\n"
        lines.append(line)
        size += len(line)
        n += 1
    return b"".join(lines)


def parse(data: bytes | bytearray) -> int:
    """What every consumer of a dataset does: decode and parse each line."""
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
    return len(rows)


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the JSONL in MB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    args = parser.parse_args()
    offline.enforce()
    with tempfile.TemporaryDirectory(prefix="bench-vault-") as tmp:
        folder = Path(tmp)
        data = synthetic_jsonl(int(args.mb * 1e6))
        mb = len(data) / 1e6
        plain = folder / "data.jsonl"
        plain.write_bytes(data)
        master = bytes(range(32))
        oid = new_object_id()
        enc = folder / "data.enc"
        enc_s, _ = best(lambda: write_object(enc, master, oid, [data]), args.repeat)

        # Interleaved, so that both sides see the same load on a shared machine.
        plain_s = vault_s = read_plain_s = read_vault_s = float("inf")
        n_plain = n_vault = 0
        for _ in range(args.repeat):
            t, n_plain = best(lambda: parse(plain.read_bytes()), 1)
            plain_s = min(plain_s, t)
            t, n_vault = best(lambda: parse(read_object(enc, master, oid)), 1)
            vault_s = min(vault_s, t)
            read_plain_s = min(read_plain_s, best(plain.read_bytes, 1)[0])
            read_vault_s = min(read_vault_s, best(lambda: read_object(enc, master, oid), 1)[0])
        assert n_plain == n_vault

        ws, _ = workspace.init(folder / "ws")
        vault = Vault.create(ws, "benchmark passphrase", "bench", target_s=0)
        with Registry.open(ws, audit_key=vault.audit_key) as reg:
            counter = iter(range(1000))

            def do_import() -> DatasetVersionRow:
                version, _ = datasets.import_file(
                    vault, reg, plain, f"bench{next(counter)}", eval_fraction=0.1
                )
                return version

            import_s, version = best(do_import, max(1, args.repeat - 1))

        print(f"dataset: {mb:.1f} MB JSONL, {n_plain:,} rows")
        print(f"plain read + parse:    {plain_s:7.3f} s  (read alone {read_plain_s:.3f} s)")
        print(f"vault decrypt + parse: {vault_s:7.3f} s  (decrypt alone {read_vault_s:.3f} s)")
        print(f"ratio vault/plain:     {vault_s / plain_s:7.3f}  (aim: <= 1.25)")
        print(f"encrypt alone:         {mb / enc_s:7.0f} MB/s")
        print(
            f"import (validate, normalise, dedup, split, encrypt, record): {import_s:.2f} s, "
            f"{mb / import_s:.1f} MB/s ({version['rows']:,} rows)"
        )


if __name__ == "__main__":
    main()
