#!/usr/bin/env bash
# On the GPU device (H100/H200), with pack.sh's .carry/ (and .kcache-carry/ when there is one):
# the check of the `wgmma` NF4 products (`kernels/gemm_wgmma`, the default `--nf4-product
# fused256-wgmma`). In order of what matters: their kernel tests against the CPU reference
# (forward with adapter / bias / split, dX with its added term; both mainloops), the
# model-level product test over every `--nf4-product`, the 7B QLoRA step with the default
# against `fused256-wide` on the same machine, then `bench kernels` at 2,048 rows (per 7B
# shape: wide against wgmma). The Python stack does not fit the same call's 64 MiB with these
# binaries: run `bash tools/device/train-bench.sh py 7b -- --optimizer adamw_8bit` (with
# .whl/) right after, on the warm machine. Logs under $OUT; the kernel cache comes back for
# .kcache-carry/.
# Usage: bash tools/device/wgmma-check.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source "$(dirname "$0")/kcache.sh"
kcache_restore
mkdir -p /tmp/mq
for f in medqlora test-medqlora_kernels test-nf4_model; do
  [ -f .carry/$f.xz ] && xz -dc .carry/$f.xz > /tmp/mq/$f && chmod +x /tmp/mq/$f
done
[ -f models/rand-7b/config.json ] || (python3 tools/make_random_model.py tools/configs/qwen2.5-7b-text.json models/rand-7b > "$OUT/gen7b.log" 2>&1) &
gen=$!
# One call has 600 s: each stage gets what is left of BUDGET (570 s) less a margin for the
# kernel cache's packing; the 7B steps run only when the kernel tests pass.
budget=${BUDGET:-570}
left() { local l=$(( budget - SECONDS - ${1:-0} )); [ $l -gt 0 ] && echo $l || echo 1; }
echo "== wgmma kernel tests ($SECONDS s)"
timeout $(left 400) /tmp/mq/test-medqlora_kernels gemm_wgmma --test-threads 1 --nocapture > "$OUT/wgmma-tests.log" 2>&1
passed=$?
grep -E "relative|test |result|panicked|never written" "$OUT/wgmma-tests.log" | cut -c1-400 | tail -40
echo "== model-level products ($SECONDS s)"
timeout $(left 380) /tmp/mq/test-nf4_model nf4_product_strategies --nocapture 2>&1 | grep -E "relative|test |result|panicked" | tail -24
wait $gen; tail -1 "$OUT/gen7b.log" 2>/dev/null
if [ $passed -eq 0 ]; then
  echo "== 7B QLoRA step ($SECONDS s)"
  for flags in "" "--nf4-product fused256-wide"; do
    echo "-- [${flags:-default}]"
    rm -f "$OUT/stderr.log"  # train-bench.sh prints its step lines from there
    timeout $(( $(left 120) < 170 ? $(left 120) : 170 )) bash tools/device/train-bench.sh mq 7b -- --optimizer adamw_8bit $flags 2>&1 | grep -E "bench train|^step [234]" | cut -c1-330
  done
else
  echo "== the kernel tests failed: no 7B step (the default runs them)"
fi
echo "== bench kernels --rows 2048 ($SECONDS s)"
timeout $(left 30) /tmp/mq/medqlora --kernel-cache "$PWD/.kcache" bench kernels --rows 2048 2>&1 | tee "$OUT/bench-kernels.md" | grep -E "^\| (nf4 fused|burn|device)|panicked" | head -80
echo "==== $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader) ($SECONDS s)"
kcache_pack 2
