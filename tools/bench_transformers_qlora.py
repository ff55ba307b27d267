#!/usr/bin/env python3
"""QLoRA training throughput of the Python reference stack (transformers + bitsandbytes + PEFT)
on a checkpoint folder (random weights are fine: speed does not depend on values).

Same setup as `medqlora bench train`: NF4 base with double quantization and bf16 compute,
LoRA r/alpha on the seven projections, gradient checkpointing, AdamW, one random sequence of
--seq tokens per step with the loss on every token. Prints one line:
  transformers+bnb+peft qlora: seq 2048 bs 1 r 64: 2744 tok/s, peak allocated 15.59 GB

usage: python3 tools/bench_transformers_qlora.py MODEL_DIR [--seq 2048] [--batch 1] [--r 64]
       [--steps 5] [--warmup 2] [--no-nf4] [--optimizer adamw|adamw_8bit]
"""
import argparse, sys, time, torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from peft import LoraConfig, get_peft_model

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--seq", type=int, default=2048)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--r", type=int, default=64)
ap.add_argument("--alpha", type=float, default=16)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--no-nf4", action="store_true")
ap.add_argument("--optimizer", choices=["adamw", "adamw_8bit"], default="adamw",
                help="torch.optim.AdamW, or bitsandbytes.optim.AdamW8bit (blockwise 8-bit moments)")
a = ap.parse_args()

kw = dict(dtype=torch.bfloat16, device_map={"": 0}, attn_implementation="sdpa")
if not a.no_nf4:
    kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
model = AutoModelForCausalLM.from_pretrained(a.model, **kw)
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.enable_input_require_grads()
model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.05, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
# from_pretrained returns the model in eval mode, where transformers skips gradient
# checkpointing (it applies only `if self.gradient_checkpointing and self.training`) and
# dropout: without train() the run keeps every layer's activations.
model.train()
params = [p for p in model.parameters() if p.requires_grad]
if a.optimizer == "adamw_8bit":
    import bitsandbytes as bnb
    opt = bnb.optim.AdamW8bit(params, lr=2e-4, weight_decay=0.0)
else:
    opt = torch.optim.AdamW(params, lr=2e-4)
vocab = model.config.vocab_size
g = torch.Generator().manual_seed(0)
torch.cuda.reset_peak_memory_stats()
times = []
for step in range(a.warmup + a.steps):
    ids = torch.randint(0, vocab, (a.batch, a.seq), generator=g).cuda()
    torch.cuda.synchronize(); t = time.time()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    # Clipped at 1.0 as `medqlora bench train` does; the norm and loss go to stderr per step,
    # so a run whose numbers break says so next to its speed.
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    print(f"step {step}: loss {loss.item():.4f}, grad norm {norm.item():.4e}", file=sys.stderr)
    if step >= a.warmup:
        times.append(time.time() - t)
tok_s = a.batch * a.seq * len(times) / sum(times)
peak = torch.cuda.max_memory_allocated() / 1e9
reserved = torch.cuda.max_memory_reserved() / 1e9
print(f"transformers+bnb+peft qlora{'' if not a.no_nf4 else ' (bf16 base)'}: seq {a.seq} bs {a.batch} r {a.r} {a.optimizer}: "
      f"{tok_s:.0f} tok/s, peak allocated {peak:.2f} GB, peak reserved {reserved:.2f} GB")
