#!/usr/bin/env bash
# Builds the CUDA binary and CUDA test binaries here (the device has no Rust toolchain) and
# packs them, xz-compressed, into .carry/ (git-ignored) for the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .carry && rm -f .carry/*.xz
cargo build --release --features cuda
# Only the suites that exercise the CUDA backend are built (all of them took 34 min on 2 cores):
# the kernel crate's unit tests, and the listed integration tests.
# (a binary may be listed on several lines, one name filter each: one --test per binary)
tests=(); for name in $(cut -d' ' -f1 tools/device/gpu-tests.txt | sort -u); do [ "$name" = medqlora_kernels ] || tests+=(--test "$name"); done
{ cargo test --release --features cuda --no-run -p medqlora-kernels --lib --message-format=json
  cargo test --release --features cuda --no-run "${tests[@]}" --message-format=json; } 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    t = m.get("target", {})
    # Integration tests, and the unit tests of the kernel crate (kernels against their references).
    if m.get("reason") == "compiler-artifact" and m.get("executable") and (t["kind"] == ["test"] or t["name"] == "medqlora_kernels"):
        print(t["name"], m["executable"])' > .carry/tests.txt
cp "${CARGO_TARGET_DIR:-target}/release/medqlora" .carry/medqlora
# Only the suites that exercise the CUDA backend travel (64 MiB per call).
while read -r name exe; do
  cut -d' ' -f1 tools/device/gpu-tests.txt | grep -qx "$name" && cp "$exe" ".carry/test-$name"
done < .carry/tests.txt
xz -T2 -6 -f .carry/medqlora .carry/test-*
du -sh .carry; ls -la .carry
