#!/usr/bin/env bash
# On the GPU device: GPU memory and generate speed of the Qwen2.5-7B-shaped text stack
# (random weights) with NF4 weights — medqlora (quantize on load) next to transformers +
# bitsandbytes in the same session. Peak memory.used is sampled by nvidia-smi every 200 ms.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bin=/tmp/mq; mkdir -p $bin
xz -dc .carry/medqlora.xz > $bin/medqlora && chmod +x $bin/medqlora
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 tools/make_random_model.py tools/configs/qwen2.5-7b-text.json /tmp/q7 2>&1 | tail -1
peak() {  # runs "$@" while sampling GPU memory; prints the peak MiB above the idle baseline
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.log & local pid=$!
  "$@"; kill $pid; sleep 0.3
  echo "peak GPU memory.used above idle: $(( $(sort -n /tmp/mem.log | tail -1) - base )) MiB"
}
peak $bin/medqlora bench generate --model /tmp/q7 --device cuda --dtype bf16 --quantize nf4 --prompt-tokens 32 --new-tokens 8 --warmup 1 --runs 1 2>&1 | tee "$OUT/medqlora-7b.log"
peak python3 tools/bench_transformers_generate.py /tmp/q7 --dtype bfloat16 --nf4 --prompt-tokens 32 --new-tokens 8 --runs 1 2>&1 | grep -v kernels-comm | tail -1 | tee "$OUT/transformers-7b.log"
