#!/usr/bin/env python3
"""Writes a Hugging Face checkpoint folder with random weights for a given config.json.

Used for speed and memory benchmarks on the device, where the real weights cannot travel
(speed does not depend on weight values). Weights use transformers' own init, saved in bf16.

usage: python3 tools/make_random_model.py CONFIG_JSON OUT_DIR [--dtype bfloat16|float32]
"""
import argparse, json, torch
from transformers import AutoConfig, AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("config")
ap.add_argument("out")
ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
a = ap.parse_args()
cfg = AutoConfig.from_pretrained(a.config)
torch.manual_seed(0)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, a.dtype))
model.save_pretrained(a.out, safe_serialization=True)
print(f"random {cfg.architectures[0]} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params) -> {a.out}")
