#!/usr/bin/env python3
"""Torch / bitsandbytes side of `medqlora bench kernels`: the same Qwen2.5-VL-7B shapes and
the same table columns, measured in the same device session.

Rows: device copy bandwidth (torch copy_ of 1 GiB), torch bf16 matmul X @ W^T (cuBLAS),
bitsandbytes NF4 dequantize_4bit to bf16, and bitsandbytes' NF4 matmul
(bnb.matmul_4bit: its GEMV kernel for M = 1, dequantize + cuBLAS otherwise), NF4 with
double quantization and blocksize 64 as QLoRA uses. Timing: CUDA events, a warm-up, then
the median of 3 rounds of back-to-back launches; weights rotate over copies larger than the
50 MB L2 for the memory-bound rows, like the Rust side.

usage: python3 tools/bench_torch_kernels.py [--quick]
"""
import statistics
import sys

import torch

SHAPES = [(3584, 3584), (512, 3584), (18944, 3584), (3584, 18944)]
MS = [1, 8, 2048, 8192]
L2 = 50 << 20


def time_us(fn, reps):
    fn(0)
    torch.cuda.synchronize()
    rounds = []
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(reps):
            fn(i)
        b.record()
        torch.cuda.synchronize()
        rounds.append(a.elapsed_time(b) * 1e3 / reps)
    return statistics.median(rounds)


def row(op, m, n, k, us, nbytes, flops, note=""):
    d = lambda v: "-" if v == 0 else str(v)
    print(f"| {op} | {d(m)} | {d(n)} | {d(k)} | {us:.1f} | {nbytes / us / 1e3:.0f} | {flops / us / 1e6:.1f} | {note} |", flush=True)


def main():
    quick = "--quick" in sys.argv
    shapes, ms = ([(3584, 3584)], [1, 2048]) if quick else (SHAPES, MS)
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes unavailable ({e}); torch rows only", flush=True)
        bnb = None
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, bitsandbytes {bnb.__version__ if bnb else '-'}, {torch.cuda.get_device_name()}")
    print("| op | M | N | K | us | GB/s | TFLOP/s | note |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    nbytes = 1 << 30
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    us = time_us(lambda i: dst.copy_(src), 20)
    copy_gbs = 2 * nbytes / us / 1e3
    row("torch copy_ (1 GiB -> 1 GiB)", 0, 0, 0, us, 2 * nbytes, 0, "ceiling for memory-bound kernels")
    del src, dst
    for n, k in shapes:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        qs = []
        if bnb is not None:
            wbytes = n * k // 2 + n * k // 64
            copies = min(max(-(-L2 // wbytes), 2), 16) * 2
            for _ in range(copies):
                q, st = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
                qs.append((q, st))
            us = time_us(lambda i: F.dequantize_4bit(qs[i % copies][0], qs[i % copies][1]), 20)
            b = wbytes + 2 * n * k
            row("bnb dequantize_4bit -> bf16", 0, n, k, us, b, 0, f"{100 * b / us / 1e3 / copy_gbs:.0f}% of copy")
        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            flops = 2 * m * n * k
            reps = 5 if m >= 2048 else 20
            us = time_us(lambda i: x @ w.t(), reps)
            row("torch bf16 matmul (cuBLAS)", m, n, k, us, 2 * (m * k + n * k + m * n), flops)
            if bnb is not None:
                # matmul_4bit expects W^T's quant state like Linear4bit does: x @ W^T.
                xs = x if m > 1 else x.view(1, 1, k)
                us = time_us(lambda i: bnb.matmul_4bit(xs, qs[i % len(qs)][0].t(), quant_state=qs[i % len(qs)][1]), reps if m > 8 else 50)
                row("bnb matmul_4bit (NF4)", m, n, k, us, n * k // 2 + n * k // 64 + 2 * (m * k + m * n), flops,
                    "gemv_4bit" if m == 1 else "dequant + cuBLAS")
            del x
        del w, qs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
