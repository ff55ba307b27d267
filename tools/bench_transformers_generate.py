#!/usr/bin/env python3
"""Same-session comparison for `medqlora bench generate`: transformers greedy decoding of a
checkpoint folder, batch 1, stop tokens ignored, prompt of N tokens, median of several runs.

usage: python3 tools/bench_transformers_generate.py MODEL_DIR [--prompt-tokens 128] [--new-tokens 128] [--dtype bfloat16]
"""
import argparse, statistics, time, torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--prompt-tokens", type=int, default=128)
ap.add_argument("--new-tokens", type=int, default=128)
ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--nf4", action="store_true", help="load with bitsandbytes NF4 + double quant (QLoRA's base)")
a = ap.parse_args()
dtype = getattr(torch, a.dtype)
if a.nf4:
    from transformers import BitsAndBytesConfig
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, quantization_config=q, device_map="cuda").eval()
else:
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).cuda().eval()
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(a.prompt_tokens)]], device="cuda")


def once():
    torch.cuda.synchronize(); t0 = time.perf_counter()
    with torch.no_grad():
        model(ids)  # prefill alone
    torch.cuda.synchronize(); t1 = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
    torch.cuda.synchronize(); t2 = time.perf_counter()
    prefill = t1 - t0
    decode = (t2 - t1) - prefill  # generate = prefill + (new-1) decode steps
    return a.prompt_tokens / prefill, (a.new_tokens - 1) / decode


once()
res = [once() for _ in range(a.runs)]
print(f"transformers generate | {a.model} | cuda {a.dtype}{' bnb-nf4' if a.nf4 else ''} | {torch.cuda.memory_allocated() / 1e9:.2f} GB allocated | prompt {a.prompt_tokens} tok: prefill "
      f"{statistics.median(r[0] for r in res):.1f} tok/s | {a.new_tokens} new tok: decode "
      f"{statistics.median(r[1] for r in res):.2f} tok/s (median of {a.runs})")
