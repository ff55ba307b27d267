# Sourced by the device scripts that train on several GPUs. cudarc loads NCCL at run time as
# `libnccl.so`; the image's PyTorch wheel ships `libnccl.so.2`, so a link to it goes on
# LD_LIBRARY_PATH. NVLink multicast stays off (the device's KINDS.md: it can take the host's
# GPUs out of service).
nccl_env() {
  local lib; lib=$(find "$(python3 -c 'import site; print(site.getsitepackages()[0])')/nvidia" -name 'libnccl.so*' | head -1)
  [ -n "$lib" ] || { echo "no libnccl.so.2 in the Python packages"; return 1; }
  mkdir -p /tmp/ncclib && ln -sf "$lib" /tmp/ncclib/libnccl.so
  export LD_LIBRARY_PATH=/tmp/ncclib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} NCCL_NVLS_ENABLE=0
  echo "NCCL: $lib"
}
