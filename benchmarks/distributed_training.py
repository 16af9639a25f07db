"""Training throughput of `pmoe.train.fit` under torchrun: data parallel (DDP) and data x expert parallel, and the
share of the step time that the communication takes.

Each rank trains on random uint8 images (held in memory, so no decoding is timed; the host-to-device copy of each
batch is, as in a real run) through the library's own distributed session: sharded batches, EP all-to-alls, DDP or
FSDP2, expert-gradient reduction, bf16 autocast on CUDA. Epoch 1 warms up; epoch 2 gives images/s (all ranks
together); epoch 3 runs under torch.profiler on rank 0, whose GPU kernels give the communication shares: the time of
the all-to-all kernels (NCCL send/recv) and of the other collectives (all-reduce, reduce-scatter, all-gather) over
the epoch's wall time. A collective kernel's time includes its wait for the slowest rank.

    torchrun --standalone --nproc-per-node 2 benchmarks/distributed_training.py --model vit-moe-s \\
        --model-opt router=patch --model-opt num_selected=1 --expert-parallel 2 --out results/ep2.json
    torchrun --standalone --nproc-per-node 2 benchmarks/distributed_training.py --device cpu --model vit-moe-tiny \\
        --image-size 28 --batch-per-rank 16 --steps 4 --expert-parallel 2 --out /tmp/ep2.json   # gloo, a check
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from pmoe.data.vision import ImageDataset
from pmoe.options import parse_options
from pmoe.runs.images import build_for_data
from pmoe.train import FitConfig, OptimConfig, fit

A2A = ("SendRecv", "AllToAll")  # NCCL kernel names of all_to_all_single
OTHER = ("AllReduce", "ReduceScatter", "AllGather", "Broadcast")


def random_images(n: int, side: int, classes: int) -> ImageDataset:  # (n, 3, side, side) uint8, the same on each rank
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
    return ImageDataset(x, torch.randint(classes, (n,), generator=g), [str(c) for c in range(classes)],
                        (0.5,) * 3, (0.25,) * 3)


def kernel_shares(prof: profile, seconds: float) -> dict[str, float]:
    """{'all_to_all', 'other_collectives'}: the summed GPU time of those NCCL kernels / `seconds` (wall)."""
    sums = {"all_to_all": 0.0, "other_collectives": 0.0}
    for evt in prof.key_averages():  # kernels carry their GPU time as self time; CPU-side ops carry none
        kind = next((k for k, words in (("all_to_all", A2A), ("other_collectives", OTHER))
                     if "nccl" in evt.key.lower() and any(w in evt.key for w in words)), None)
        if kind is not None:
            sums[kind] += evt.self_device_time_total / 1e6
    return {k: round(v / seconds, 4) for k, v in sums.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit-moe-s")
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE", help="preset field (repeatable)")
    p.add_argument("--expert-parallel", type=int, default=1)
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--batch-per-rank", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="JSON written by rank 0")
    args = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = args.batch_per_rank * world
    ds = random_images(batch * args.steps, args.image_size, args.classes)
    overrides = parse_options(args.model_opt, "--model-opt")
    model = build_for_data(args.model, ds, overrides)
    cfg = FitConfig(epochs=4, max_steps=3 * args.steps + 1, batch_size=batch, augment=False, device=args.device,
                    optim=OptimConfig("adamw", lr=1e-4, weight_decay=0.05, clip_norm=1.0),
                    expert_parallel=args.expert_parallel, fsdp=args.fsdp)
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if args.device != "cpu"
                   else [ProfilerActivity.CPU])
    rank = lambda: dist.get_rank() if dist.is_initialized() else 0  # noqa: E731

    def on_epoch(rec: dict) -> None:  # profile epoch 3 on rank 0
        if rank() == 0 and rec["epoch"] == 2:
            prof.start()
        if rank() == 0 and rec["epoch"] == 3:
            prof.stop()

    history = fit(model, ds, None, cfg, progress=False, on_epoch=on_epoch)
    if rank() != 0:
        return
    e2, e3 = history[1], history[2]
    ips = e2["images_per_second"]
    row = {"model": args.model, "model_options": overrides, "world": world, "expert_parallel": args.expert_parallel,
           "fsdp": args.fsdp, "batch_per_rank": args.batch_per_rank, "image_size": args.image_size,
           "images_per_second": round(ips, 1), "images_per_second_per_rank": round(ips / world, 1),
           **kernel_shares(prof, args.steps * batch / e3["images_per_second"]),
           "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu", "torch": torch.__version__}
    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
