#!/usr/bin/env bash
# On the GPU device: the real Qwen2.5-0.5B learns clinical JSON extraction, and the evaluator
# scores the NF4 base and the trained adapter on the test splits (issue 5's comparison).
# The checkpoint (1.26 GB) cannot travel in one call (64 MiB), so its source, the GGUF that
# ../shared/tools/fetch-qwen2.5-0.5b.sh downloads, travels in 56 MiB pieces, each call
# carrying the next (`.xfer/p00` ... `.xfer/p08`), and is converted there by the same
# gguf_to_hf.py (sha256 checked on both sides). Carried besides: `.xfer/work/` (gguf wheel,
# gguf_to_hf.py, mts-sections.tar.xz = `medqlora datasets mtsamples --task sections` output)
# and `.carry-train/medqlora.xz` (release build with --features cuda). tools/device/pack-model.sh
# prepares .xfer/ here.
#   bash tools/device/clinical-eval.sh train [SECS] [DEVICES]   # model, data, training (resumes);
#                                                   # DEVICES e.g. 0,1: data parallel over NCCL
#   bash tools/device/clinical-eval.sh scaling STEPS    # same recipe, STEPS steps on 1 then 2 GPUs
#   bash tools/device/clinical-eval.sh eval synth       # base vs adapter, synthetic test split
#   bash tools/device/clinical-eval.sh eval mts-sections [LIMIT]
#   bash tools/device/clinical-eval.sh prep             # model and data only
#   bash tools/device/clinical-eval.sh diag [N]         # first N MTSamples test records, batch 1 vs
#                                                   # N, NF4 vs dense: how each answer ended
#   bash tools/device/clinical-eval.sh kcache           # return the kernel cache (tools/device/kcache.sh)
# Kernels compiled and tuned in one call are kept in .kcache for the next (--kernel-cache);
# carrying .kcache-carry/ brings back one from an earlier session.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bin=/tmp/mq/medqlora
if [ ! -x $bin ]; then mkdir -p /tmp/mq && xz -dc .carry-train/medqlora.xz > $bin && chmod +x $bin || exit 1; fi
source "$(dirname "$0")/kcache.sh"
kcache_restore
M="$bin --kernel-cache $PWD/.kcache --autotune minimal"
model=models/qwen2.5-0.5b
run=runs/qwen2.5-0.5b-clinical-full

if [ ! -f $model/model.safetensors ]; then
  t0=$(date +%s)
  cat .xfer/p*/gg.* > /tmp/model.gguf
  echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  /tmp/model.gguf" | sha256sum -c - || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gg .xfer/work/gguf-*.whl || exit 1
  PYTHONPATH=/tmp/gg python3 .xfer/work/gguf_to_hf.py /tmp/model.gguf $model || exit 1
  rm -f /tmp/model.gguf
  echo "model converted in $(( $(date +%s) - t0 )) s; expect af21c1ed9a7b818e... (the file fetch-model.sh builds)"
  sha256sum $model/model.safetensors
fi
if [ ! -f data/clinical/train.jsonl ]; then
  # Training sees 400 documents per kind; the scored test split is the one of 150 per kind (64
  # records, the CPU figures' split). Document i depends only on (kind, seed, i) and the split
  # on a hash of the id, so the 150-document test split is inside the 400-document one and no
  # test record is trained on.
  $M datasets synth --kind all --n 150 --seed 7 --out data/synth || exit 1
  $M datasets synth --kind all --n 400 --seed 7 --out data/synth-400 || exit 1
  mkdir -p data && tar xJf .xfer/work/mts-sections.tar.xz -C /tmp && rm -rf data/mts-sections && mv /tmp/mts data/mts-sections
  mkdir -p data/clinical
  cat data/synth-400/train.jsonl data/mts-sections/train.jsonl > data/clinical/train.jsonl
  cat data/synth-400/val.jsonl data/mts-sections/val.jsonl > data/clinical/val.jsonl
  wc -l data/*/*.jsonl
fi

pack() {  # what comes back: one archive of the run's small files and the adapter
  tar cJf "$OUT/clinical.tar.xz" $(ls -d $run/metrics.jsonl $run/train.log runs/eval/*/report.* runs/scale-*/metrics.jsonl 2>/dev/null)
  # The adapter comes back in 15 MiB pieces (16 MiB per returned file): cat adapter.st.* to rejoin.
  if [ -f $run/adapter/adapter_model.safetensors ]; then
    split -b 15M -d $run/adapter/adapter_model.safetensors "$OUT/adapter.st." && cp $run/adapter/adapter_config.json "$OUT/"
  fi
}

source "$(dirname "$0")/nccl-env.sh"

case "${1:-}" in
  prep) exit 0 ;;  # model and data only
  diag)
    n=${2:-4}
    for v in "nf4 1" "nf4 $n" "none $n"; do
      set -- $v
      $M eval --model $model --quantize $1 --device cuda --dtype bf16 --batch-size $2 --max-new-tokens 320 \
        --data data/mts-sections/test.jsonl --limit $n --out runs/diag/$1-b$2 2>&1 | tail -2
    done
    python3 - runs/diag/nf4-b1 runs/diag/nf4-b$n runs/diag/none-b$n <<'PY'
import json, sys
for d in sys.argv[1:]:
    r = json.load(open(d + "/report.json"))
    print(f"== {d}: field accuracy {100 * r['overall']['field_score_sum'] / max(1, r['overall']['fields']):.1f}%")
    for x in r["records"]:
        e = x.get("end", {})
        print(f"  {x['id']}: {e.get('new_tokens')} tokens, {'budget' if e.get('hit_budget') else 'stopped'}, json {x['valid_json']}: {x['output'][:90]!r} ... {x['output'][-40:]!r}")
PY
    ;;
  kcache) kcache_pack 4; exit 0 ;;
  scaling)
    nccl_env || exit 1
    steps=${2:-12}
    for devs in 0 0,1; do
      d=runs/scale-${devs//,/}; rm -rf $d
      timeout 280 $M train recipes/qwen2.5-0.5b-clinical-full.toml --output-dir $d --max-steps $steps --devices $devs 2>&1 | grep -v "^\s*$" | tail -4
    done
    python3 tools/device/steps_summary.py "1 GPU=runs/scale-0" "2 GPUs=runs/scale-01"
    ;;
  train)
    resume=""; ls -d $run/checkpoints/step-* >/dev/null 2>&1 && resume="--resume latest"
    mkdir -p $run
    # SIGINT before the call's limit: the trainer checkpoints and exits 0; the next call resumes.
    devices=""; [ -n "${3:-}" ] && { nccl_env || exit 1; devices="--devices $3"; }
    timeout -k 30 -s INT ${2:-500} $M train recipes/qwen2.5-0.5b-clinical-full.toml $resume $devices 2>&1 | tee -a $run/train.log | grep -v "^\s*$" | tail -40
    ;;
  eval)
    set_=${2:?synth or mts-sections}; limit=${3:+--limit $3}
    E="$M eval --model $model --quantize nf4 --device cuda --dtype bf16 --batch-size 32 --max-new-tokens 320 --data data/$set_/test.jsonl $limit"
    [ -f runs/eval/$set_-base/report.json ] || $E --out runs/eval/$set_-base 2>&1 | tail -8
    $E --adapter $run/adapter --out runs/eval/$set_-adapter --compare runs/eval/$set_-base/report.json 2>&1 | tail -8
    cat runs/eval/$set_-adapter/report.md | head -60
    ;;
  *) echo "usage: clinical-eval.sh train [SECONDS] [DEVICES] | scaling STEPS | eval synth|mts-sections [LIMIT] | kcache"; exit 2 ;;
esac
pack
