#!/usr/bin/env python3
"""Fixture for tests/train_grad.rs: one step's LoRA gradients from HF PEFT.

Loads tests/fixtures/qwen2_tiny (transformers Qwen2ForCausalLM, f32, eager), wraps it with
PEFT LoRA (r 4, alpha 8, dropout 0, all seven projections), sets every lora_A / lora_B to
seeded random values (B non-zero, otherwise A's gradient is zero and the test could not fail),
and runs one forward/backward on a right-padded batch with labels = -100 on prompt and pad
positions (transformers' causal-LM loss: shift by one, mean over scored tokens).

Writes tests/fixtures/peft_grad.safetensors:
  input_ids [2, 10] i64, labels [2, 10] i64 (-100 = not scored), loss [] f32,
  <module>.lora_A / <module>.lora_B (PEFT names without the base_model.model. prefix) and
  grad.<same> for each.

usage: python3 tools/make_fixture_peft_grad.py [OUT=tests/fixtures/peft_grad.safetensors]
"""
import os, sys
import torch
from safetensors.torch import save_file
from transformers import Qwen2ForCausalLM
from peft import LoraConfig, get_peft_model

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "fixtures", "peft_grad.safetensors")

base = Qwen2ForCausalLM.from_pretrained(os.path.join(HERE, "..", "tests", "fixtures", "qwen2_tiny"),
                                        torch_dtype=torch.float32, attn_implementation="eager")
cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(base, cfg)
g = torch.Generator().manual_seed(2024)
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
model.train()

ids = torch.randint(3, 512, (2, 10), generator=g)
labels = ids.clone()
labels[0, :4] = -100          # prompt
labels[1, :6] = -100
labels[1, 8:] = -100          # right padding
ids[1, 8:] = 0
out = model(input_ids=ids, labels=labels)
out.loss.backward()

tensors = {"input_ids": ids, "labels": labels, "loss": out.loss.detach().reshape(())}
for name, p in model.named_parameters():
    if "lora_" in name:
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
        key = name.replace("base_model.model.", "", 1).replace(".default.weight", "")
        tensors[key] = p.detach().contiguous()
        tensors["grad." + key] = p.grad.detach().contiguous()
save_file(tensors, OUT)
print(f"wrote {OUT}: loss {out.loss.item():.6f}, {sum(1 for k in tensors if k.startswith('grad.'))} gradients")
