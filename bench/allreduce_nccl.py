"""NCCL all-reduce of one flat bf16 tensor (a student's gradient bytes) across the processes torchrun starts.

Used by scripts/gpu/distill_2gpu.sh beside the 2-GPU distillation, to say how long the gradient all-reduce alone
takes on this host (the trainer overlaps it with backward in buckets; this is the whole volume at once).
Usage: python -m torch.distributed.run --nproc_per_node 2 bench/allreduce_nccl.py --elements N --out FILE
"""
import argparse
import json
import os

import torch
import torch.distributed as dist


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--elements", type=int, required=True)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    x = torch.ones(args.elements, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(args.iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dist.all_reduce(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    median_ms = times[len(times) // 2]
    nbytes = args.elements * 2
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"world_size": world, "elements": args.elements, "bytes": nbytes, "dtype": "bfloat16",
                       "median_ms": median_ms, "min_ms": times[0],
                       # ring all-reduce bus bandwidth: 2 (n - 1) / n of the bytes cross each link
                       "bus_bandwidth_gb_s": nbytes * 2 * (world - 1) / world / (median_ms / 1e3) / 1e9,
                       "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE")}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
