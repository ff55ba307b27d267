#!/usr/bin/env bash
# The CUDA compile check without a GPU: every kernel compiled for the H200 (sm_90a) by NVRTC,
# with ptxas' registers and spills, shared memory and resident cubes per SM.
#   bash tools/cuda-check.sh [--only TEXT] [--out DIR]
# Needs pip (NVIDIA's NVRTC and CUDA header wheels, fetched once into .cuda-tools/) and a
# Vulkan driver for kernel expansion (Debian: apt-get install mesa-vulkan-drivers).
# Exit status: 0 all compiled without spills, 1 a kernel failed or spilled, 2 bad arguments,
# 3 the environment lacks NVRTC or a Vulkan driver (nothing was checked).
set -uo pipefail
cd "$(dirname "$0")/.."
tools=.cuda-tools
cuda="$tools/nvidia/cu13"
if [ ! -f "$cuda/lib/libnvrtc.so.13" ] || [ ! -f "$cuda/include/mma.h" ]; then
  mkdir -p "$tools/wheels"
  # NVRTC 13.0 as on the H200 machines (its builtins library too), and the headers the
  # kernels include: cuda_runtime.h, cuda_bf16.h/cuda_fp16.h (runtime), mma.h (crt), cccl.
  if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$tools/wheels" \
      'nvidia-cuda-nvrtc==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-cuda-cccl==13.0.*'; then
    echo "cuda-check: could not download NVIDIA's NVRTC wheels with pip; nothing checked" >&2
    exit 3
  fi
  for w in "$tools"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tools"; done
fi
# The dev profile (dependencies at opt-level 2) shares its build with
# `cargo test -p medqlora-kernels --features cuda-check`. NVRTC opens its builtins library by
# name, from the library path.
LD_LIBRARY_PATH="$PWD/$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo run --quiet -p medqlora-kernels --features cuda-check --bin cuda_check -- \
  --nvrtc "$cuda/lib/libnvrtc.so.13" --include "$cuda/include" "$@"
