#!/usr/bin/env bash
# Runs on the GPU device from the checkout's root, with .carry/ from tools/device/pack.sh:
# the CUDA test binaries, then the generate benchmarks (medqlora and transformers, same
# session, random weights of the real 0.5B shape). Logs go to $OUT; a short table is last.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bin=/tmp/mq; mkdir -p $bin
for f in .carry/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
summary=()
for t in $bin/test-*; do
  name=$(basename "$t")
  "$t" --nocapture --test-threads=1 > "$OUT/$name.log" 2>&1; rc=$?
  grep -E "max-abs|SKIPPED|test result|panicked" "$OUT/$name.log"
  summary+=("$name: $(grep -E '^test result' "$OUT/$name.log" | tail -1) (rc $rc)")
done
if ls .whl/bitsandbytes-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  python3 tools/make_fixtures_nf4.py "$OUT/nf4_bnb.safetensors" 2>&1 | grep -v kernels-community | tail -1
fi
python3 tools/make_random_model.py tools/configs/qwen2.5-0.5b.json /tmp/q05 > "$OUT/random.log" 2>&1 || cat "$OUT/random.log"
for dt in bf16 f32; do
  r=$("$bin/medqlora" bench generate --model /tmp/q05 --device cuda --dtype $dt --prompt-tokens 128 --new-tokens 128 --warmup 1 --runs 3 2>>"$OUT/bench.log")
  echo "$r"; summary+=("$r")
done
r=$(python3 tools/bench_transformers_generate.py /tmp/q05 --dtype bfloat16 2>>"$OUT/bench.log" | tail -1)
echo "$r"; summary+=("$r")
echo; echo "==== summary ($(cat "$OUT/gpu.txt"))"; printf '%s\n' "${summary[@]}"
