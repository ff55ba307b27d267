#!/usr/bin/env bash
# On a multi-GPU kind (nvidia-h200-x2 or more): is NCCL healthy there, and does medqlora's
# data-parallel step run? 1. PyTorch's own NCCL all-reduce (the environment); 2. the tiny-smoke
# recipe for STEPS steps on 1 GPU, then on all GPUs (grad_accum = their number) with
# NCCL_DEBUG=WARN; a stalled step prints what each rank is doing every minute (the watchdog).
# Needs .carry-train/medqlora.xz (release + cuda). Usage: bash tools/device/dp-check.sh [STEPS] [SECS]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source "$(dirname "$0")/nccl-env.sh"
source "$(dirname "$0")/kcache.sh"
kcache_restore
steps=${1:-6}; secs=${2:-240}
bin=/tmp/mq/medqlora
[ -x $bin ] || { mkdir -p /tmp/mq && xz -dc .carry-train/medqlora.xz > $bin && chmod +x $bin; } || exit 1
nccl_env || exit 1
n=$(nvidia-smi -L | wc -l)
timeout 120 python3 tools/device/nccl_check.py 2>&1 | grep -v Warning | tail -3
devs=$(seq -s, 0 $((n - 1)))
sed "s/^grad_accum = .*/grad_accum = $n/; s/^max_seq_len.*/&\npad_to_multiple_of = 512/" recipes/tiny-smoke.toml > /tmp/tiny-dp.toml
for d in 0 "$devs"; do
  t0=$(date +%s); out=/tmp/tdp-${d//,/}; rm -rf $out
  NCCL_DEBUG=WARN timeout -k 10 "$secs" $bin --kernel-cache "$PWD/.kcache" --autotune minimal train /tmp/tiny-dp.toml \
    --device cuda --dtype bf16 --devices "$d" --max-steps "$steps" --output-dir $out 2>&1 | tee "$OUT/dp-${d//,/}.log" | grep -v "^\s*$" | tail -12
  echo "devices $d: rc ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s"
  cp $out/metrics.jsonl "$OUT/metrics-${d//,/}.jsonl" 2>/dev/null
done
# Same data, same steps: the losses must agree (reduction-order rounding).
python3 tools/device/steps_summary.py "1 GPU=/tmp/tdp-0" "$n GPUs=/tmp/tdp-${devs//,/}"
