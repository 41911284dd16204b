#!/usr/bin/env bash
# The one prepared GPU run (issues 16 and 28), for the device machine: one H100 or H200, one
# command of at most 10 minutes.
#
# Before (here, no device time): put the wheels the machine lacks in .whl/ (git-ignored), as
# ../.library/device/README.md says: diffusers and what it needs beyond torch/transformers,
# and DeepCache (the reference of the `deepcache` rows), e.g. `python3 -m pip download
#   --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#   --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1
#   DeepCache==0.1.1 torchao==0.18.0` (torchao: the `fp8` rows)
# (pure-Python wheels need no platform). Check the script first: `bash bench/gpu_run.sh --smoke`.
#
# Then: device run, carry [".whl"], command `bash bench/gpu_run.sh`, timeout_s 600. Stages
# (GPU_RUN_STAGES, in this order by default; each under its own timeout, 550 s in all):
#   sd15     SD 1.5 512^2 at batch 1 and 16: raw pipeline plain and with the DeepCache
#            package, the engine plain and with its per-request DeepCache
#   compiled SD 1.5 at batch 16: the engine compiled, and compiled with the cache (compile
#            mode "default": max-autotune takes minutes per graph)
#   sdxl     SDXL 1024^2 at batch 1 and 8: raw plain, engine, engine with the cache
#   trace    the GPU trace of bench.trace_bench (not by default: run it alone)
#   dit      FLUX.1 [schnell], SD3.5 Medium and Z-Image-Turbo at 1024^2 (issue 23), batch 1
#            and 4, bf16 then the transformer in fp8: images/s, peak and resident memory (not
#            by default: a second command, `GPU_RUN_STAGES=dit bash bench/gpu_run.sh`; the
#            models are made on the GPU in bf16, seconds each, bench/dit_architectures.py)
# Results land in $OUT as they are written (gpu_bench writes its JSON after every row), so a
# timeout still returns what was measured.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT="${OUT:-bench/results/gpu_run${SMOKE:+_smoke}}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
copy() {
  for name in gpu_bench_sd15 gpu_bench_sd15_compiled gpu_bench_sdxl gpu_bench_dit trace_bench_gpu; do
    cp "bench/results/$name.json" "$OUT/" 2>/dev/null
  done
  return 0
}
trap copy EXIT
if [ -n "$SMOKE" ]; then
  # Every variant on a scaled-down SD 1.5 on the CPU, only to check the script itself.
  OMP_NUM_THREADS=1 python3 -m bench.gpu_bench --smoke --models sd15 --batches 1 2 --steps 3 \
    --repeats 1 --out gpu_bench_all 2>&1 | tee "$OUT/gpu_bench.log"
  [ "${PIPESTATUS[0]}" = 0 ] || exit 1
  OMP_NUM_THREADS=1 python3 -m bench.gpu_bench --smoke --models flux-schnell sd35-medium \
    zimage-turbo --batches 1 2 --repeats 1 --variants plain fp8 --out gpu_bench_dit 2>&1 \
    | tee -a "$OUT/gpu_bench.log"
  exit "${PIPESTATUS[0]}"
fi
BENCH="python3 -m bench.gpu_bench"
for stage in ${GPU_RUN_STAGES:-sd15 compiled sdxl}; do
  case "$stage" in
    sd15) timeout 200 $BENCH --models sd15 --batches 1 16 --out gpu_bench_sd15 \
      --variants plain deepcache engine engine_cache ;;
    compiled) timeout 200 $BENCH --models sd15 --batches 16 --out gpu_bench_sd15_compiled \
      --compile-mode default --variants engine_compiled engine_compiled_cache ;;
    sdxl) timeout 150 $BENCH --models sdxl --batches 1 8 --out gpu_bench_sdxl \
      --variants plain engine engine_cache ;;
    trace) timeout 240 python3 -m bench.trace_bench --gpu --requests 200 ;;
    dit) timeout 400 $BENCH --models flux-schnell sd35-medium zimage-turbo --batches 1 4 \
      --repeats 1 --variants plain fp8 --out gpu_bench_dit ;;
    *) echo "unknown stage $stage" >&2 ;;
  esac 2>&1 | tee -a "$OUT/gpu_run.log"
  copy
done
