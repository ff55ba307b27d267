#!/usr/bin/env bash
# On the GPU device: QLoRA training throughput and peak GPU memory, medqlora next to
# transformers + bitsandbytes + PEFT in the same session, on random weights of the
# Qwen2.5-0.5B and Qwen2.5-7B text shapes (seq 2048, bs 1, r 64, gradient checkpointing).
# Needs .carry-train/medqlora.xz (release + cuda) and bitsandbytes' wheel in .whl/.
# Peak memory.used above idle is sampled by nvidia-smi every 100 ms. A short table comes last.
# Usage: bash tools/device/train-bench.sh [0.5b] [7b]      (default: both)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bin=/tmp/mqt; mkdir -p $bin
xz -dc .carry-train/medqlora.xz > $bin/medqlora && chmod +x $bin/medqlora
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
summary=()
peak() {  # runs "$@", prints its last stdout line + the peak MiB above the idle baseline
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & local pid=$!
  local line; line=$("$@" 2>>"$OUT/stderr.log" | grep -v kernels-community | tail -1)
  kill $pid; sleep 0.3
  echo "$line | peak GPU memory.used $(( $(sort -n /tmp/mem.log | tail -1) - base )) MiB"
}
for size in ${@:-0.5b 7b}; do
  cfg=tools/configs/qwen2.5-$size.json; [ "$size" = 7b ] && cfg=tools/configs/qwen2.5-7b-text.json
  python3 tools/make_random_model.py $cfg /tmp/m$size 2>&1 | tail -1
  r=$(XDG_CACHE_HOME=/tmp/cache-train peak $bin/medqlora bench train --model /tmp/m$size --device cuda --dtype bf16 --quantize nf4 --seq 2048 --r 64 --steps 3 --warmup 2); echo "$r"; summary+=("$r")
  r=$(peak python3 tools/bench_transformers_qlora.py /tmp/m$size --seq 2048 --r 64 --steps 3 --warmup 2); echo "$r"; summary+=("$r")
  rm -rf /tmp/m$size
done
echo; echo "==== summary ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader))"; printf '%s\n' "${summary[@]}"
