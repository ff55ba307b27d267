#!/usr/bin/env bash
# On the GPU device: is a QLoRA training step bound by the GPU or by the host's kernel
# launches? Nsight Systems records one `bench train` step on a LAYERS-layer cut of the
# Qwen2.5-7B text shape (as tools/device/kernel-profile.sh, at full clocks), then prints the
# step's wall time, the kernels' summed time, the GPU's idle time between kernels (gaps
# longer than 5 us), and the host's launch-call time. Idle GPU time close to the wall time
# minus kernel time, with launch calls summing to about the wall time, means the host is
# the limit. Needs .carry/medqlora.xz (tools/device/pack.sh) or /tmp/mq/medqlora.
# The H100 lent on 2026-12-06 had no Nsight Systems: the script then says so and exits 3.
# Usage: LAYERS=2 bash tools/device/timeline.sh [-- EXTRA bench-train flags]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ "${1:-}" = -- ] && shift
layers=${LAYERS:-2}
source "$(dirname "$0")/kcache.sh"
kcache_restore
nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys /usr/local/cuda/nsight-systems*/bin/nsys 2>/dev/null | head -1)
[ -n "$nsys" ] || { echo "timeline: no nsys on this machine (looked in PATH, /usr/local/cuda, /opt/nvidia)"; exit 3; }
source "$(dirname "$0")/step-setup.sh"
step_prepare $layers "$@" || exit 1
# Two steps after one warm-up; the last step is the one summarized.
"$nsys" profile --trace=cuda --sample=none --cpuctxsw=none -o /tmp/timeline -f true $bin "${args[@]}" --steps 2 --warmup 1 > "$OUT/timeline-run.log" 2>&1
grep -E "^step" "$OUT/timeline-run.log" | tail -3
"$nsys" stats --report cuda_gpu_trace --format csv --output /tmp/timeline-gpu /tmp/timeline.nsys-rep > /dev/null 2>&1
"$nsys" stats --report cuda_api_trace --format csv --output /tmp/timeline-api /tmp/timeline.nsys-rep > /dev/null 2>&1
python3 - /tmp/timeline-gpu_cuda_gpu_trace.csv /tmp/timeline-api_cuda_api_trace.csv "$OUT/timeline-run.log" <<'PY'
import csv, re, sys
gpu = [r for r in csv.DictReader(open(sys.argv[1]))]
api = [r for r in csv.DictReader(open(sys.argv[2]))]
steps = [float(x) for x in re.findall(r"^step \d+: .*?, ([0-9.]+)s;", open(sys.argv[3]).read(), re.M)]
kern = sorted((int(r["Start (ns)"]), int(r["Start (ns)"]) + int(r["Duration (ns)"])) for r in gpu if r.get("Name") and "memcpy" not in r["Name"].lower() and "memset" not in r["Name"].lower())
if not kern or not steps:
    raise SystemExit("timeline: no kernels or no step times recorded")
# The last step: the kernels of the last `steps[-1]` seconds of GPU work.
end = kern[-1][1]
start = end - int(steps[-1] * 1e9)
ks = [k for k in kern if k[0] >= start]
busy = sum(b - a for a, b in ks)
gaps = [ks[i + 1][0] - ks[i][1] for i in range(len(ks) - 1)]
idle = sum(g for g in gaps if g > 5000)
launches = [r for r in api if "Launch" in r.get("Name", "") and int(r["Start (ns)"]) >= start]
launch_ns = sum(int(r["Duration (ns)"]) for r in launches)
print(f"last step: wall {steps[-1]*1e3:.1f} ms, {len(ks)} kernels, kernel time {busy/1e6:.1f} ms, GPU idle in gaps > 5 us {idle/1e6:.1f} ms ({sum(1 for g in gaps if g > 5000)} gaps), host launch calls {len(launches)} taking {launch_ns/1e6:.1f} ms")
PY
