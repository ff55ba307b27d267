#!/usr/bin/env bash
# On the GPU device: where one QLoRA training step's GPU time goes, kernel by kernel.
# Nsight Compute (ncu, in the device's CUDA toolkit) times every kernel launch of one
# `bench train` step on a LAYERS-layer cut of the Qwen2.5-7B text shape (same per-layer
# shapes, so per-layer kernels scale by 28 / LAYERS), then prints the kernels grouped by name,
# most time first. Needs .carry/medqlora.xz (tools/device/pack.sh) or /tmp/mq/medqlora.
# Usage: LAYERS=2 bash tools/device/kernel-profile.sh [-- EXTRA bench-train flags]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ "${1:-}" = -- ] && shift
layers=${LAYERS:-2}
source "$(dirname "$0")/kcache.sh"
kcache_restore
source "$(dirname "$0")/step-setup.sh"
step_prepare $layers "$@" || exit 1
ncu --metrics gpu__time_duration.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active --csv --log-file "$OUT/ncu.csv" $bin "${args[@]}" --steps 1 --warmup 0 > "$OUT/ncu-run.log" 2>&1
tail -2 "$OUT/ncu-run.log"
python3 - "$OUT/ncu.csv" "$layers" <<'PY'
import csv, sys, collections
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))]
t = collections.defaultdict(float); n = collections.Counter()
regs = {}; occ = collections.defaultdict(list)
for r in rows:
    name = r["Kernel Name"].split("(")[0][:70]
    metric = r.get("Metric Name"); v = float(r["Metric Value"].replace(",", ""))
    if metric == "launch__registers_per_thread": regs[name] = max(regs.get(name, 0), int(v)); continue
    if metric == "sm__warps_active.avg.pct_of_peak_sustained_active": occ[name].append(v); continue
    if metric != "gpu__time_duration.sum": continue
    u = r["Metric Unit"]
    v *= {"ns": 1e-9, "nsecond": 1e-9, "us": 1e-6, "usecond": 1e-6, "ms": 1e-3, "msecond": 1e-3, "s": 1, "second": 1}[u]
    t[name] += v; n[name] += 1
total = sum(t.values())
print(f"{sum(n.values())} launches, {total*1e3:.1f} ms GPU time in one step ({sys.argv[2]} layers)")
print("| kernel | launches | ms | share | registers | achieved occupancy |")
for k, v in sorted(t.items(), key=lambda kv: -kv[1])[:40]:
    o = f"{sum(occ[k]) / len(occ[k]):.0f}%" if occ[k] else "-"
    print(f"| {k} | {n[k]} | {v*1e3:.2f} | {100*v/total:.1f}% | {regs.get(k, '-')} | {o} |")
PY
