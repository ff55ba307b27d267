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
if [ -x $bin/bench_kernels ]; then
  XDG_CACHE_HOME=/tmp/cache-bench timeout 300 $bin/bench_kernels "$@" 2>&1 | tee "$OUT/bench_kernels.md"
elif [ -x $bin/medqlora ]; then
  XDG_CACHE_HOME=/tmp/cache-bench timeout 300 $bin/medqlora bench kernels "$@" 2>&1 | tee "$OUT/bench_kernels.md"
fi
if ls .whl/bitsandbytes-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
PYTHONUNBUFFERED=1 timeout 240 python3 tools/bench_torch_kernels.py "$@" 2>&1 | grep -v kernels-community | tee "$OUT/bench_torch.md"
echo; echo "==== summary ($(cat "$OUT/gpu.txt"))"; printf '%s\n' "${summary[@]}"
