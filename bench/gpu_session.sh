#!/usr/bin/env bash
# Every GPU check of the project in one go, for a machine lent for a few minutes: the training
# maths side by side with the bare loop (gpu_check), the product's whole path through the CLI
# (gpu_e2e), several-process training (gpu_parallel, where present) and the tests marked `gpu`.
# Each step has its own time limit, so one that hangs costs only its share; outputs go to $OUT
# (at most eight files, one folder down), for bench/results/ and docs/benchmarks.md.
#
# Where the GPU image lacks our pure-Python dependencies (bitsandbytes, cryptography, gguf, ...),
# put their wheels in .whl/ first (`pip download --no-deps -d .whl ...`); they are installed to
# /tmp/site, not over the image's packages.
#
#   OUT=bench/out/gpu_session bash bench/gpu_session.sh
set -u
OUT=${OUT:-bench/out/gpu_session}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, output to $OUT/NAME.txt, say how long
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - started)) s (limit $limit s)" | tee -a "$OUT/steps.txt"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__)"
} >"$OUT/steps.txt" 2>&1

# --no-parallel: the DDP/FSDP checks run below as their own step, with their own limit.
step gpu_check "${GPU_CHECK_LIMIT:-210}" python3 bench/gpu_check.py --no-parallel --out /tmp/gpu_check
cp /tmp/gpu_check/summary.json "$OUT/gpu_check.json" 2>/dev/null
step gpu_e2e "${GPU_E2E_LIMIT:-120}" python3 bench/gpu_e2e.py --out /tmp/gpu_e2e
cp /tmp/gpu_e2e/metrics.jsonl "$OUT/gpu_e2e-metrics.jsonl" 2>/dev/null
if [ -f bench/gpu_parallel.py ]; then
    step gpu_parallel "${GPU_PARALLEL_LIMIT:-120}" python3 bench/gpu_parallel.py --out /tmp/gpu_parallel
    cp /tmp/gpu_parallel/parallel.json "$OUT/gpu_parallel.json" 2>/dev/null
fi
# The project's pytest settings name plugins (Qt) the GPU image lacks: run the gpu tests bare,
# collecting only the files that have some (the others may import Qt).
mapfile -t gpu_tests < <(grep -rl "mark.gpu" tests --include="test_*.py")
step pytest_gpu "${GPU_PYTEST_LIMIT:-90}" python3 -m pytest -c /dev/null --rootdir . \
    -p no:cacheprovider -q -m gpu "${gpu_tests[@]}"
