"""NCCL health on the device, independent of medqlora: PyTorch all-reduces a tensor across
all GPUs (one process per GPU) and checks the sum. Run by tools/device/dp-check.sh."""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank: int, world: int) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    x = torch.full((1 << 20,), float(rank + 1), device="cuda")
    dist.all_reduce(x)
    torch.cuda.synchronize()
    want = world * (world + 1) / 2
    if rank == 0:
        ok = bool((x == want).all())
        print(f"torch NCCL all-reduce over {world} GPUs: {x[0].item():.0f} (expected {want:.0f}) {'OK' if ok else 'WRONG'}")
    dist.destroy_process_group()


if __name__ == "__main__":
    n = torch.cuda.device_count()
    if n < 2:
        sys.exit(f"needs 2+ GPUs, found {n}")
    mp.spawn(rank_main, args=(n,), nprocs=n)
