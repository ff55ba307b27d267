# Sourced by the device scripts that study one training step on a cut of the 7B shape
# (kernel-profile.sh, timeline.sh): the binary and the model.
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
