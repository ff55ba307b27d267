# Sourced by the device scripts that study one training step on a cut of the 7B shape
# (kernel-profile.sh, timeline.sh): the binary, the model and the bench-train command line.
# step_bin: /tmp/mq/medqlora, unpacked from .carry/medqlora.xz (tools/device/pack.sh) if absent.
step_bin() {
  [ -x /tmp/mq/medqlora ] || { mkdir -p /tmp/mq && xz -dc .carry/medqlora.xz > /tmp/mq/medqlora && chmod +x /tmp/mq/medqlora; }
}
# step_model LAYERS: prints models/rand-7b-<LAYERS>l, made from the Qwen2.5-7B text config
# with LAYERS decoder layers (random weights, tools/make_random_model.py) if absent.
step_model() {
  local layers=$1 m=models/rand-7b-$1l
  if [ ! -f $m/config.json ]; then
    python3 -c "import json; c=json.load(open('tools/configs/qwen2.5-7b-text.json')); c['num_hidden_layers']=$layers; json.dump(c,open('/tmp/cfg-${layers}l.json','w'))"
    python3 tools/make_random_model.py /tmp/cfg-${layers}l.json $m >&2
  fi
  echo $m
}
# step_prepare LAYERS [EXTRA bench-train flags]: sets bin, m and args (the `bench train` flags
# for the LAYERS-layer cut at seq 2048, r 64), then runs one untimed step, which compiles what
# the kernel cache lacks so the profiled run times kernels only.
step_prepare() {
  local layers=$1; shift
  step_bin || return 1
  bin=/tmp/mq/medqlora
  m=$(step_model $layers) || return 1
  args=(--kernel-cache $PWD/.kcache --autotune minimal bench train --model $m --device cuda --dtype bf16 --quantize nf4 --seq 2048 --r 64 "$@")
  # A failed warm-up is not fatal: the profiled run that follows shows the error.
  $bin "${args[@]}" --steps 1 --warmup 0 2>&1 | tail -1
  return 0
}
