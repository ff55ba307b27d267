"""Compares training runs of the same recipe and data from their metrics.jsonl: throughput
over steps 3.. (the first steps meet new shapes and compile kernels), relative to the first
run, and the largest relative loss difference to the first run (ranks only change the order
of additions). Used by clinical-eval.sh (scaling) and dp-check.sh.
Usage: python3 steps_summary.py LABEL=RUN_DIR ..."""
import json
import sys


def steps(run):
    try:
        with open(f"{run}/metrics.jsonl") as f:
            return [r["metrics"] for r in map(json.loads, f) if r["kind"] == "train"]
    except FileNotFoundError:
        return []


runs = [(label, steps(run)) for label, run in (a.split("=", 1) for a in sys.argv[1:])]
base_tps, base_loss = None, None
print("| run | steps | tok/s (steps 3..) | vs first | losses |")
print("| --- | --- | --- | --- | --- |")
for label, m in runs:
    late = [r for r in m if r["step"] >= 3]
    secs = sum(r["seconds"] for r in late)
    tps = sum(r["tokens"] for r in late) / secs if secs else 0.0
    base_tps = base_tps or tps
    losses = [r["loss"] for r in m]
    print(f"| {label} | {len(m)} | {tps:,.0f} | {tps / base_tps if base_tps else 0:.2f}x | {' '.join(f'{l:.4f}' for l in losses)} |")
    if base_loss is None:
        base_loss = losses
    elif losses and base_loss:
        d = max(abs(a - b) / abs(b) for a, b in zip(losses, base_loss))
        print(f"largest relative loss difference, {label} vs {runs[0][0]}: {d:.2e}")
