#!/usr/bin/env bash
# The one prepared GPU run of issue 16, for the device machine (an H200: 15 minutes in all).
#
# Before (here, no device time): put the wheels the machine lacks in .whl/ (git-ignored), as
# ../.library/device/README.md says: diffusers and what it needs beyond torch/transformers,
# e.g. `python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
#   --implementation cp --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1`
# (pure-Python wheels need no platform). Check the script first: `bash bench/gpu_run.sh --smoke`.
#
# Then: device run, carry [".whl"], command `bash bench/gpu_run.sh`, timeout_s 560. Results
# land in $OUT as they are written (gpu_bench writes its JSON after every row), so a timeout
# still returns what was measured; rerun with GPU_RUN_SKIP=gpu to do only the trace.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu_run}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
copy() { cp bench/results/trace_bench_gpu.json "$OUT/" 2>/dev/null; }
trap copy EXIT
if [ "${1:-}" = "--smoke" ]; then
  OMP_NUM_THREADS=1 python3 -m bench.gpu_bench --smoke --models sd15 --batches 1 2 --steps 2 \
    --repeats 1 2>&1 | tee "$OUT/gpu_bench.log"
  exit
fi
if [ "${GPU_RUN_SKIP:-}" != "gpu" ]; then
  # SD 1.5 at 512^2: every variant at 1/4/8/16 (about 4 minutes with the compiles), then SDXL.
  timeout 330 python3 -m bench.gpu_bench --models sd15 --batches 1 4 8 16 2>&1 \
    | tee "$OUT/gpu_bench.log"
  cp bench/results/gpu_bench.json "$OUT/gpu_bench_sd15.json"
  timeout 90 python3 -m bench.gpu_bench --models sdxl --batches 1 4 --variants plain engine \
    2>&1 | tee "$OUT/gpu_bench_sdxl.log"
  cp bench/results/gpu_bench.json "$OUT/gpu_bench_sdxl.json"
fi
timeout 240 python3 -m bench.trace_bench --gpu --requests 200 2>&1 | tee "$OUT/trace_bench.log"
