#!/usr/bin/env python3
"""Reads a medqlora run's TensorBoard events with TensorBoard's own EventAccumulator (what the
TensorBoard UI uses) and prints, per scalar tag, the number of points and the first/last value.

usage: python3 tools/check_tensorboard.py RUN_DIR [--require TAG ...]
Exits 1 when a required tag is missing or has no points.
"""
import argparse, os, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ap = argparse.ArgumentParser()
ap.add_argument("run_dir")
ap.add_argument("--require", nargs="*", default=["train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "eval/loss"])
a = ap.parse_args()
acc = EventAccumulator(os.path.join(a.run_dir, "tb"), size_guidance={"scalars": 0})
acc.Reload()
tags = acc.Tags().get("scalars", [])
for tag in sorted(tags):
    ev = acc.Scalars(tag)
    print(f"{tag}: {len(ev)} points, step {ev[0].step} = {ev[0].value:.4g} ... step {ev[-1].step} = {ev[-1].value:.4g}")
missing = [t for t in a.require if t not in tags or not acc.Scalars(t)]
if missing:
    print(f"missing scalar tags: {missing}", file=sys.stderr)
    sys.exit(1)
