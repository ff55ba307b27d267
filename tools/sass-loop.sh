#!/usr/bin/env bash
# The instruction mix of kernels' main loops for the H200 (sm_90a), without a GPU:
#   bash tools/cuda-check.sh --only gemm64 --out /tmp/cu && bash tools/sass-loop.sh /tmp/cu/*.cu
# Fetches NVIDIA's cuobjdump and nvdisasm wheels once into .cuda-tools/ (NVRTC and the headers
# come from tools/cuda-check.sh's fetch).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cuda="$root/.cuda-tools/nvidia/cu13"
[ -f "$cuda/lib/libnvrtc.so.13" ] || { echo "run bash tools/cuda-check.sh first (it fetches NVRTC)" >&2; exit 3; }
if [ ! -x "$cuda/bin/cuobjdump" ] || [ ! -x "$cuda/bin/nvdisasm" ]; then
  # 13.2 is the oldest of these on the package index; they only disassemble.
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$root/.cuda-tools/wheels" \
    'nvidia-cuda-cuobjdump==13.2.*' 'nvidia-cuda-nvdisasm==13.2.*'
  for w in "$root"/.cuda-tools/wheels/nvidia_cuda_cuobjdump-*.whl "$root"/.cuda-tools/wheels/nvidia_cuda_nvdisasm-*.whl; do
    python3 -m zipfile -e "$w" "$root/.cuda-tools"
  done
  chmod +x "$cuda"/bin/*
fi
PATH="$cuda/bin:$PATH" LD_LIBRARY_PATH="$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  python3 "$root/tools/sass_loop.py" "$cuda/lib/libnvrtc.so.13" "$cuda/include" "$cuda/bin/cuobjdump" "$@"
