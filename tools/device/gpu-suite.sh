#!/usr/bin/env bash
# Runs on the GPU device from the checkout's root, with .carry/ from tools/device/pack.sh
# (and bitsandbytes' wheel in .whl/): the CUDA test binaries, the bitsandbytes fixtures, then
# the generate benchmarks (medqlora and transformers in the same session, random weights of
# the real 0.5B shape). Logs and fixtures go to $OUT; a short table is printed last.
# Which test binaries run, each with an optional name filter: tools/device/gpu-tests.txt
# (those not yet seen passing on a GPU first, as a call may run out of time).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bin=/tmp/mq; mkdir -p $bin
for f in .carry/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
summary=()
if ls .whl/bitsandbytes-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  python3 tools/make_fixtures_nf4.py "$OUT/nf4_bnb.safetensors" 2>&1 | grep -v kernels-community | tail -1
  r=$(python3 tools/check_bnb_roundtrip.py tests/fixtures/qwen2_tiny_nf4 "$OUT/nf4_transformers.safetensors" 2>&1 | grep -v kernels-community | tail -1)
  echo "$r"; summary+=("$r")
fi
while read -r test filter; do
  name=test-$test; t=$bin/$name
  [ -x "$t" ] || { summary+=("$name: not packed"); continue; }
  start=$(date +%s)
  log="$OUT/$name${filter:+-${filter%% *}}.log"
  "$t" --nocapture --test-threads=1 $filter < /dev/null > "$log" 2>&1; rc=$?
  grep -E "max-abs|SKIPPED|test result|panicked|seed" "$log"
  summary+=("$name ${filter:-(all)}: $(grep -E '^test result' "$log" | tail -1) (rc $rc, $(( $(date +%s) - start )) s)")
done < tools/device/gpu-tests.txt
python3 tools/make_random_model.py tools/configs/qwen2.5-0.5b.json /tmp/q05 > "$OUT/random.log" 2>&1 || cat "$OUT/random.log"
for q in none nf4; do
  r=$("$bin/medqlora" bench generate --model /tmp/q05 --device cuda --dtype bf16 --quantize $q --prompt-tokens 128 --new-tokens 64 --warmup 1 --runs 2 2>>"$OUT/bench.log")
  echo "$r"; summary+=("$r")
done
for flag in "" "--nf4"; do
  r=$(python3 tools/bench_transformers_generate.py /tmp/q05 --dtype bfloat16 --new-tokens 64 $flag 2>>"$OUT/bench.log" | tail -1)
  echo "$r"; summary+=("$r")
done
echo; echo "==== summary ($(cat "$OUT/gpu.txt"))"; printf '%s\n' "${summary[@]}"
