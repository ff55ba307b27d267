#!/usr/bin/env bash
# Builds the NF4 kernel test binaries and `bench_kernels` (and, when the root crate builds,
# its nf4 kernel integration tests and the medqlora binary) in release + cuda, and packs them
# xz-compressed into .carry-kern/ (git-ignored via .git/info/exclude) for the device tool.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .carry-kern && rm -f .carry-kern/*
cargo build --release -p medqlora-kernels --features cuda --bins
cargo test --release -p medqlora-kernels --features cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "medqlora_kernels":
        print(m["executable"])' | while read -r exe; do cp "$exe" .carry-kern/test-medqlora_kernels; done
cp target/release/bench_kernels .carry-kern/bench_kernels
if [ "${WITH_ROOT:-1}" = 1 ]; then
  cargo build --release --features cuda
  cargo test --release --features cuda --test nf4_kernels --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | while read -r exe; do cp "$exe" .carry-kern/test-nf4_kernels; done
  cp target/release/medqlora .carry-kern/medqlora
fi
xz -T2 -6 -f .carry-kern/*
du -sh .carry-kern; ls -la .carry-kern
