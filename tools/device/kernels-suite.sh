#!/usr/bin/env bash
# Runs on the GPU device from the checkout's root with .carry-kern/ from
# tools/device/pack-kernels.sh (and bitsandbytes' wheel in .whl/ when carried): the NF4 kernel
# tests (medqlora-kernels' device tests and the root crate's nf4 kernel integration tests),
# then `bench kernels` and the torch/bitsandbytes table for the same shapes, in one session.
# Usage: bash tools/device/kernels-suite.sh [--quick]   (logs under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bin=/tmp/mqk; mkdir -p $bin
for f in .carry-kern/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
summary=()
for t in $bin/test-*; do
  name=$(basename "$t")
  # One autotune/kernel cache per binary (two binaries sharing one crashed in an earlier session).
  XDG_CACHE_HOME=/tmp/cache-$name timeout 300 "$t" --nocapture --test-threads=1 < /dev/null > "$OUT/$name.log" 2>&1; rc=$?
  grep -E "relative|SKIPPED|test result|panicked|FAILED|seed" "$OUT/$name.log" | grep -v "^seed" | tail -40
  summary+=("$name: $(grep -E '^test result' "$OUT/$name.log" | tail -1) (rc $rc)")
done
if [ -x $bin/medqlora ]; then
  XDG_CACHE_HOME=/tmp/cache-bench timeout 300 $bin/medqlora bench kernels "$@" 2>&1 | tee "$OUT/bench_kernels.md"
elif [ -x $bin/bench_kernels ]; then
  XDG_CACHE_HOME=/tmp/cache-bench timeout 300 $bin/bench_kernels "$@" 2>&1 | tee "$OUT/bench_kernels.md"
fi
if ls .whl/bitsandbytes-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
[ "${SKIP_TORCH:-0}" = 1 ] || PYTHONUNBUFFERED=1 timeout 240 python3 tools/bench_torch_kernels.py "$@" 2>&1 | grep -v kernels-community | tee "$OUT/bench_torch.md"
# End to end: NF4 decode/prefill of the 0.5B shape now goes through the GEMV / fused GEMM.
if [ -x $bin/medqlora ] && [ "${SKIP_GENERATE:-0}" != 1 ]; then
  python3 tools/make_random_model.py tools/configs/qwen2.5-0.5b.json /tmp/q05 > "$OUT/random.log" 2>&1 || tail -3 "$OUT/random.log"
  for q in none nf4; do
    r=$(XDG_CACHE_HOME=/tmp/cache-gen timeout 200 $bin/medqlora bench generate --model /tmp/q05 --device cuda --dtype bf16 --quantize $q --prompt-tokens 128 --new-tokens 64 --warmup 1 --runs 2 2>>"$OUT/generate.log")
    echo "$r"; summary+=("$r")
  done
fi
echo; echo "==== summary ($(cat "$OUT/gpu.txt"))"; printf '%s\n' "${summary[@]}"
