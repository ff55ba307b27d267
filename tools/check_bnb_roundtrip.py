#!/usr/bin/env python3
"""transformers + bitsandbytes load a checkpoint written by `medqlora quantize` and compute
logits, which tests/nf4_transformers.rs compares with medqlora's NF4 forward.

Input: tests/fixtures/qwen2_tiny_nf4 (`medqlora quantize --model tests/fixtures/qwen2_tiny
--out tests/fixtures/qwen2_tiny_nf4`) and the input ids of tests/fixtures/qwen2_tiny.
Output: reference.safetensors {input_ids, logits} (f32 compute, eager attention) plus
`loaded_as`: the module class transformers built for one projection (must be Linear4bit).
Needs a CUDA GPU and bitsandbytes (run it on the device).

usage: python3 tools/check_bnb_roundtrip.py [MODEL_DIR] [OUT_FILE]
"""
import os, sys
import torch
import transformers, bitsandbytes as bnb
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

here = os.path.dirname(__file__)
model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "tests", "fixtures", "qwen2_tiny_nf4")
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(model_dir, "reference.safetensors")
ids = load_file(os.path.join(here, "..", "tests", "fixtures", "qwen2_tiny", "reference.safetensors"))["input_ids"]
model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cuda", dtype=torch.float32, attn_implementation="eager").eval()
proj = model.model.layers[0].mlp.down_proj
assert isinstance(proj, bnb.nn.Linear4bit), type(proj)
assert proj.weight.quant_state.nested, "double quantization was not picked up"
with torch.no_grad():
    logits = model(input_ids=ids.cuda()).logits.float().cpu()
save_file({"input_ids": ids, "logits": logits.contiguous()}, out,
          metadata={"loaded_as": type(proj).__name__, "transformers": transformers.__version__, "bitsandbytes": bnb.__version__})
print(f"transformers {transformers.__version__} + bitsandbytes {bnb.__version__} loaded {model_dir} as {type(proj).__name__}; logits {tuple(logits.shape)} -> {out}")
