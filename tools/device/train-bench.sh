#!/usr/bin/env bash
# On the GPU device: QLoRA training throughput and peak GPU memory, medqlora next to
# transformers + bitsandbytes + PEFT in the same session, on random weights of the
# Qwen2.5-0.5B and Qwen2.5-7B text shapes (seq 2048, bs 1, r 64, gradient checkpointing).
# `mq` needs .carry-train/medqlora.xz or pack.sh's .carry/medqlora.xz (release + cuda); `py` needs bitsandbytes' wheel in .whl/
# (the two do not fit one call's 64 MiB, so they are separate calls of one session).
# Peak memory.used above the idle baseline is sampled by nvidia-smi every 100 ms, the same way
# for both. The random checkpoint stays in models/rand-SIZE for the next call.
# Usage: bash tools/device/train-bench.sh mq|py SIZE... [-- EXTRA]   (SIZE: 0.5b, 7b; EXTRA:
# more flags for `medqlora bench train` / the Python script, e.g. `-- --optimizer adamw_8bit`;
# medqlora also takes `--profile`: forward / backward / optimizer seconds per step). STEPS and
# WARMUP (default 3 and 2) set medqlora's timed and untimed steps. Repeat the call for a second
# variant: the model and the kernel cache stay on a warm machine.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
who=${1:?mq or py}; shift
sizes=(); while [ $# -gt 0 ] && [ "$1" != -- ]; do sizes+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
extra=("$@")
source "$(dirname "$0")/kcache.sh"
kcache_restore
if [ "$who" = mq ]; then
  bin=/tmp/mq/medqlora
  packed=.carry-train/medqlora.xz; [ -f $packed ] || packed=.carry/medqlora.xz  # pack.sh's
  [ -x $bin ] || { mkdir -p /tmp/mq && xz -dc $packed > $bin && chmod +x $bin; } || exit 1
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
peak() {  # runs "$@", prints its last stdout line + the peak MiB above the idle baseline
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & local pid=$!
  local line; line=$("$@" 2>>"$OUT/stderr.log" | grep -v kernels-community | tail -1)
  kill $pid; sleep 0.3
  echo "$line | peak GPU memory.used $(( $(sort -n /tmp/mem.log | tail -1) - base )) MiB"
}
for size in "${sizes[@]}"; do
  cfg=tools/configs/qwen2.5-$size.json; [ "$size" = 7b ] && cfg=tools/configs/qwen2.5-7b-text.json
  m=models/rand-$size
  [ -f $m/config.json ] || python3 tools/make_random_model.py $cfg $m 2>&1 | tail -1
  if [ "$who" = mq ]; then
    peak $bin --kernel-cache $PWD/.kcache --autotune minimal bench train --model $m --device cuda --dtype bf16 --quantize nf4 --seq 2048 --r 64 --steps ${STEPS:-3} --warmup ${WARMUP:-2} "${extra[@]}"
  else
    peak python3 tools/bench_transformers_qlora.py $m --seq 2048 --r 64 --steps 3 --warmup 2 "${extra[@]}"
  fi
done
grep -E "^(memory|step|optimizer|profile)" "$OUT/stderr.log" | tail -12
echo "==== $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
