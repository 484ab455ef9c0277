"""Parquet import benchmark: peak memory of a Parquet import against the same rows as CSV.

Usage::

    .venv/bin/python bench/bench_parquet.py [--rows 200000] [--row-group 20000] [--chars 160]

Writes ``--rows`` made-up alpaca rows (instruction, input, output; no user data) as a Parquet
file (row groups of ``--row-group`` rows, zstd) and as a CSV file with exactly the same cells,
then imports each with ``appliance.datasets.import_file`` in its own fresh child process and
reads that process's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``
once the appliance, pyarrow and the vault are set up, so the figures are what the import itself
added above the resident memory at that moment; Linux only).

Prints, for each file: size, import time, peak RSS, and the peak above the baseline; then the
ratios Parquet/CSV (peak above baseline) and peak above baseline / Parquet file size, and the
memory the whole table would take decoded at once (``pyarrow.Table.nbytes``), which the batch
reader never allocates, against the batch reader alone. Both imports must give the same version
sha256. The rest of an import (canonical rows, deduplication, the stored plaintext) is held in
memory by design, for CSV and Parquet alike; the batch reader keeps the file's side small.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = (
    "contract clause liability party agreement notice term court damages payment invoice "
    "patient dose symptom diagnosis report account balance transfer audit risk policy the a of "
    "to and in for with on by under shall may must not"
)
WORDS = TEXT.split()

CHILD = r"""
import json, sys, time
from pathlib import Path
import pyarrow.parquet as pq  # loaded before the baseline, as a long-lived app has it
from appliance import datasets, offline, workspace
from appliance.datasets.parquet import ParquetSource
from appliance.registry import Registry
from appliance.vault import Vault

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no {field} in /proc/self/status")

offline.enforce()
mode, source, home = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ws, _ = workspace.init(home)
vault = Vault.create(ws, "benchmark passphrase", "bench", target_s=0)
# Reset the peak (the key derivation's memory came before): VmHWM restarts from VmRSS.
Path("/proc/self/clear_refs").write_text("5")
baseline = status("VmRSS")
start = time.perf_counter()
sha, rows = "", 0
if mode == "import":
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        version, _ = datasets.import_file(vault, reg, source, "bench")
    sha, rows = version["sha256"], version["rows"]
elif mode == "batches":  # the reader alone: every row as records, nothing kept
    src = ParquetSource(source)
    rows = sum(len(batch.records) for batch in src.batches())
else:  # the whole file decoded at once, as a reader without batches would
    table = pq.read_table(source)
    rows = len(table.to_pylist())
elapsed = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({"baseline": baseline, "peak": peak, "seconds": elapsed,
                  "sha256": sha, "rows": rows}))
"""


def _sentence(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words).capitalize() + "."


def write_files(folder: Path, rows: int, row_group: int, chars: int) -> tuple[Path, Path, int]:
    """The Parquet and CSV files of the same rows, and the decoded table's size in bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    columns: dict[str, list[str]] = {"instruction": [], "input": [], "output": []}
    for i in range(rows):
        columns["instruction"].append(f"Question {i}: {_sentence(rng, chars // 3)}")
        columns["input"].append(_sentence(rng, chars // 3) if i % 2 else "")
        columns["output"].append(_sentence(rng, chars // 3))
    table = pa.table(columns)
    parquet = folder / "rows.parquet"
    pq.write_table(table, parquet, row_group_size=row_group, compression="zstd")
    csv_path = folder / "rows.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    return parquet, csv_path, int(table.nbytes)


def measure(mode: str, source: Path, home: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(source), str(home)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"import of {source.name} failed:\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--row-group", type=int, default=20_000)
    parser.add_argument("--chars", type=int, default=160, help="characters of text per row")
    args = parser.parse_args()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as tmp:
        folder = Path(tmp)
        parquet, csv_path, table_bytes = write_files(folder, args.rows, args.row_group, args.chars)
        results = {}
        runs = (
            ("parquet", "import", parquet),
            ("csv", "import", csv_path),
            ("batches", "batches", parquet),
            ("table", "table", parquet),
        )
        for label, mode, path in runs:
            results[label] = measure(mode, path, folder / f"ws-{label}")
            r = results[label]
            print(
                f"{label:8s} file {path.stat().st_size / mib:6.1f} MiB  {mode} "
                f"{r['seconds']:5.1f} s  "
                f"peak RSS {r['peak'] / mib:7.1f} MiB  above baseline "
                f"{(r['peak'] - r['baseline']) / mib:7.1f} MiB  ({int(r['rows']):,} rows)"
            )
        if results["parquet"]["sha256"] != results["csv"]["sha256"]:
            raise SystemExit("the two imports gave different versions")
        pq_delta = results["parquet"]["peak"] - results["parquet"]["baseline"]
        csv_delta = results["csv"]["peak"] - results["csv"]["baseline"]
        print(f"same version sha256: {results['parquet']['sha256']}")
        print(f"peak above baseline, Parquet / CSV:         {pq_delta / csv_delta:5.2f}")
        pq_size, csv_size = parquet.stat().st_size, csv_path.stat().st_size
        print(f"peak above baseline / Parquet file size:    {pq_delta / pq_size:5.2f}")
        print(f"peak above baseline / CSV file size:        {csv_delta / csv_size:5.2f}")
        batches = results["batches"]["peak"] - results["batches"]["baseline"]
        table = results["table"]["peak"] - results["table"]["baseline"]
        print(
            f"reading alone, batch by batch / whole table at once: {batches / mib:.1f} MiB / "
            f"{table / mib:.1f} MiB = {batches / table:.2f} (Arrow table {table_bytes / mib:.1f} "
            f"MiB; {args.rows // args.row_group} row groups of {args.row_group:,} rows)"
        )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(
        f"(benchmark took {time.perf_counter() - start:.0f} s; maxrss of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB)"
    )
