#!/usr/bin/env python3
"""Reference greedy decoding of the real Qwen2.5 0.5B model (tests/real_model.rs).

Loads the checkpoint made by ../shared/tools/fetch-qwen2.5-0.5b.sh with transformers in
float32 (the precision of medqlora's CPU path), applies the checkpoint's own Jinja chat
template to fixed prompts, decodes greedily and stores prompt ids and new ids as JSON.

usage: python3 tools/make_fixture_greedy.py MODEL_DIR [OUT=tests/fixtures/qwen25_05b_greedy.json]
"""
import json, os, sys
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "Write a Python function that returns the square of a number.",
    "Extract the vital signs as JSON: BP 132/84, HR 88, RR 18, SpO2 97% on room air, temp 37.9 C.",
]
MAX_NEW = 40

model_dir = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "qwen25_05b_greedy.json")
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
cases = []
for prompt in PROMPTS:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=[151645, 151643])
    new = gen[0, ids.shape[1]:].tolist()
    cases.append({"prompt": prompt, "chat_text": text, "prompt_ids": ids[0].tolist(), "new_ids": new,
                  "new_text": tok.decode(new, skip_special_tokens=True)})
    print(repr(cases[-1]["new_text"]))
json.dump({"made_with": f"torch {torch.__version__}, transformers {transformers.__version__}, float32, eager, greedy",
           "max_new_tokens": MAX_NEW, "cases": cases}, open(out, "w"), indent=1)
print("wrote", out)
