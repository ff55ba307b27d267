#!/usr/bin/env python3
"""Parity fixtures for the Qwen2 / Qwen2.5-VL text decoder (tests/parity_qwen2.rs).

Builds tiny, seeded, random models with transformers, saves them in HF layout and records the
reference outputs (float32, eager attention):

  tests/fixtures/qwen2_tiny/         Qwen2ForCausalLM, 2 layers, hidden 64, 4 heads / 2 kv, vocab 512
      config.json, model.safetensors, reference.safetensors
        input_ids [2, 12] i64, logits [2, 12, 512], hidden.{0..2} [2, 12, 64] (HF hidden_states;
        the last entry is after the final norm, as transformers returns it)
  tests/fixtures/qwen2_tiny_tied/    the same with tie_word_embeddings=True and 1 layer
  tests/fixtures/qwen25_vl_tiny/     Qwen2_5_VLForConditionalGeneration (text path only), M-RoPE
      mrope_section [2, 3, 3], explicit 3-D position_ids whose rows differ
        input_ids [1, 10], position_ids [3, 1, 10] i64, logits [1, 10, 512]

Weights are drawn with a larger spread than HF's init (std 0.02 gives near-uniform logits that
would hide errors); biases and norm scales are random too, so every parameter matters.

usage: python3 tools/make_fixtures_qwen2.py [OUT_DIR=tests/fixtures]
Runs on the device's python3 (torch + transformers) or any CPU torch; no network needed.
"""
import json, os, sys
import torch
from safetensors.torch import save_file
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def tiny_qwen2(name, layers, tied, seed):
    cfg = Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=tied, eos_token_id=2,
        attn_implementation="eager", torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    randomize(model, seed)
    out = os.path.join(OUT, name)
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 512, (2, 12), generator=g)
    with torch.no_grad():
        res = model(input_ids=ids, output_hidden_states=True)
    tensors = {"input_ids": ids, "logits": res.logits.contiguous()}
    for i, h in enumerate(res.hidden_states):
        tensors[f"hidden.{i}"] = h.contiguous()
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    print(f"{name}: logits {tuple(res.logits.shape)}, |logits| max {res.logits.abs().max():.3f}")


def tiny_qwen25_vl(seed):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-6, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                           fullatt_block_indexes=[0]),
        image_token_id=500, video_token_id=501, vision_start_token_id=502,
        attn_implementation="eager", tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    randomize(model, seed)
    out = os.path.join(OUT, "qwen25_vl_tiny")
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 400, (1, 10), generator=g)
    # Rows differ the way an image block makes them differ: t constant, h/w walk a 2x3 grid.
    t = torch.tensor([0, 1, 2, 3, 3, 3, 3, 3, 3, 6])
    h = torch.tensor([0, 1, 2, 3, 3, 3, 4, 4, 4, 6])
    w = torch.tensor([0, 1, 2, 3, 4, 5, 3, 4, 5, 6])
    pos = torch.stack([t, h, w])[:, None, :]
    with torch.no_grad():
        res = model(input_ids=ids, position_ids=pos)
    save_file({"input_ids": ids, "position_ids": pos.contiguous(), "logits": res.logits.contiguous()},
              os.path.join(out, "reference.safetensors"))
    print(f"qwen25_vl_tiny: logits {tuple(res.logits.shape)}, |logits| max {res.logits.abs().max():.3f}")


if __name__ == "__main__":
    torch.set_default_dtype(torch.float32)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    tiny_qwen2("qwen2_tiny", layers=2, tied=False, seed=1234)
    tiny_qwen2("qwen2_tiny_tied", layers=1, tied=True, seed=99)
    tiny_qwen25_vl(seed=7)
