#!/usr/bin/env bash
# On the GPU device, one call: the 7B QLoRA training benchmark (random Qwen2.5-7B text weights,
# seq 2048, r 64, checkpointing, adamw_8bit, `--profile`) once per NF4 product strategy
# (PRODUCTS, default "fused256-wgmma" (the default product); `PRODUCTS=dequantize` in a call of its own, as its first
# run autotunes new matmul shapes), then the CUDA test binaries of tools/device/gpu-tests.txt (kernels against their references,
# parity with transformers, NF4 model, LoRA gradients, batched decoding); a table last.
# Needs .carry/ from tools/device/pack.sh, and .kcache-carry/ when a kernel cache was saved.
# The tests use the same kernel cache as the benchmark (XDG_CACHE_HOME points the CLI's default
# cache folder at .kcache), and the cache goes back to $OUT at the end (kcache_pack).
# Usage: bash tools/device/train-suite.sh [TEST_SECONDS] [-- EXTRA]   (TEST_SECONDS: time allowed
# to all tests, default 240; EXTRA: more `medqlora bench train` flags, e.g. `--memory-log FILE`)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
budget=${1:-240}; shift || true
[ "${1:-}" = -- ] && shift
extra=("$@")
cd "$(dirname "$0")/../.."
source tools/device/kcache.sh
kcache_restore; mkdir -p .kcache /tmp/xdg/medqlora && ln -sfn "$PWD/.kcache" /tmp/xdg/medqlora/kernels
bin=/tmp/mq; mkdir -p $bin
for f in .carry/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
summary=()
for product in ${PRODUCTS:-fused256-wgmma}; do
  r=$(STEPS=3 WARMUP=1 bash tools/device/train-bench.sh mq 7b -- --optimizer adamw_8bit --profile --nf4-product "$product" "${extra[@]}" | grep "^bench train")
  echo "$r"; summary+=("7b, --nf4-product $product: ${r##*| checkpointing true | }")
  grep -E "^(memory before|profile step 3|step [03]:)" "$OUT/stderr.log" | tail -5 | cut -c1-400
done
end=$(( $(date +%s) + budget ))
while read -r test filter; do
  t=$bin/test-$test; left=$(( end - $(date +%s) ))
  [ -x "$t" ] || { summary+=("$test: not packed"); continue; }
  [ $left -gt 10 ] || { summary+=("$test: not run (test time used up)"); continue; }
  log="$OUT/test-$test${filter:+-${filter%% *}}.log"
  XDG_CACHE_HOME=/tmp/xdg timeout $left "$t" --nocapture --test-threads=1 $filter < /dev/null > "$log" 2>&1; rc=$?
  grep -E "rel|max-abs|SKIPPED|panicked" "$log" | head -8 | cut -c1-300
  summary+=("$test ${filter:-(all)}: $(grep -E '^test result' "$log" | tail -1) (rc $rc)")
done < tools/device/gpu-tests.txt
kcache_pack 3
echo; echo "==== summary ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader))"; printf '%s\n' "${summary[@]}"
