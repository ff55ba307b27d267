#!/usr/bin/env python3
"""Bit-exactness fixtures for NF4 (tests/nf4_bnb.rs): bitsandbytes 0.50.2 quantize_4bit /
dequantize_4bit on seeded random tensors, with and without double quantization, for sizes
that are not multiples of 64 or 256 and for several block sizes.

Runs bitsandbytes' CUDA kernels when a GPU is present (what QLoRA users run), else its CPU
backend; the device that made the file is recorded in its metadata.

Each case `c{i}` stores: c{i}.input (f32 or bf16), c{i}.packed u8 [(n+1)/2],
c{i}.absmax (f32, or u8 with double quant), c{i}.nested_absmax f32, c{i}.offset f32[1],
c{i}.dequant f32, c{i}.quant_map f32[16], c{i}.nested_quant_map f32[256]; metadata has the
shapes, block sizes and flags as JSON.

usage: python3 tools/make_fixtures_nf4.py [OUT=tests/fixtures/nf4_bnb.safetensors]
"""
import json, os, sys
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "nf4_bnb.safetensors")
dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator().manual_seed(20261129)
# (shape, dtype, blocksize, double_quant)
CASES = [
    ((128, 96), torch.bfloat16, 64, True),     # 192 blocks: one partial nested block
    ((3, 1000), torch.float32, 64, False),     # 3000 elements: last block partial
    ((37, 91), torch.bfloat16, 64, True),      # 3367: odd count (zero-padded nibble), partial block
    ((300, 64), torch.float32, 64, True),      # 300 blocks: 256 + 44 nested
    ((64, 257), torch.bfloat16, 128, True),    # blocksize 128
    ((40, 130), torch.float32, 32, False),     # blocksize 32
    ((16, 512), torch.bfloat16, 256, True),    # blocksize 256
    ((8, 1024), torch.float32, 4096, False),   # blocksize 4096, two blocks
]
tensors, meta = {}, []
for i, (shape, dtype, bs, dq) in enumerate(CASES):
    x = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 3
    x[0, :5] = torch.tensor([0.0, -0.0, 1e-9, -1e-9, 2.5])  # zeros and tiny values
    x = x.to(dtype)
    q, st = F.quantize_4bit(x.to(dev), blocksize=bs, compress_statistics=dq, quant_type="nf4")
    deq = F.dequantize_4bit(q, st).float().cpu()
    p = f"c{i}"
    tensors[f"{p}.input"] = x.contiguous()
    tensors[f"{p}.packed"] = q.cpu().reshape(-1).contiguous()
    tensors[f"{p}.absmax"] = st.absmax.cpu().contiguous()
    tensors[f"{p}.dequant"] = deq.contiguous()
    tensors[f"{p}.quant_map"] = st.code.float().cpu().contiguous()
    if dq:
        tensors[f"{p}.nested_absmax"] = st.state2.absmax.cpu().contiguous()
        tensors[f"{p}.nested_quant_map"] = st.state2.code.float().cpu().contiguous()
        tensors[f"{p}.offset"] = st.offset.reshape(1).float().cpu().contiguous()
    meta.append({"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "blocksize": bs, "double_quant": dq})
save_file(tensors, out, metadata={"cases": json.dumps(meta), "made_on": dev,
                                  "bitsandbytes": bnb.__version__, "torch": torch.__version__})
print(f"wrote {len(CASES)} cases to {out} using bitsandbytes {bnb.__version__} on {dev}")
