"""What expert parallelism costs where one device can measure it: the plain routed layer, the layer after
`shard_experts` on a 1-rank EP group (E = 1: nothing is exchanged), and the same bank with the exchange forced on
(both all-to-alls on a 1-rank group: the local copies of a real exchange, without the transfer between GPUs).
Forward + backward, median ms, in one process group of one rank (NCCL on CUDA, gloo on CPU).

    python benchmarks/ep_overhead.py --sizes vit-b --dtype bfloat16 --out benchmarks/results/ep_overhead_h200
    python benchmarks/ep_overhead.py --sizes small --device cpu --out benchmarks/results/ep_overhead_cpu
"""
from __future__ import annotations

import argparse
import copy
import platform

import torch
import torch.distributed as dist
from moe_layers import SIZES, Size, medians_ms, report

from pmoe.layers import MlpExperts, PatchMoE, TokenMoE
from pmoe.reports import markdown_table
from pmoe.train.distributed.expert_parallel import ExpertExchange, shard_experts


class _Host(torch.nn.Module):
    """A model of one routed layer, for `shard_experts` (which shares out the layers of `moe_layers()`)."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def moe_layers(self) -> list[torch.nn.Module]:
        return [self.layer]


def layers(s: Size, device: torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The two routed layers of size `s`: patch routing (l of n per expert) and token routing (K = 2, c = 1.05)."""
    torch.manual_seed(0)
    patch = PatchMoE(MlpExperts(s.k, s.d, s.h, bias=False), l=s.l)
    token = TokenMoE(MlpExperts(s.k, s.d, s.h, bias=False), num_selected=2, capacity_factor=1.05)
    return {name: m.to(device=device, dtype=dtype) for name, m in (("patch", patch), ("token", token))}


def variants(layer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """plain | EP = 1 (`shard_experts` on the 1-rank group) | exchange forced on (both hooks on the bank)."""
    ep1, forced = copy.deepcopy(layer), copy.deepcopy(layer)
    shard_experts(_Host(ep1), dist.group.WORLD)
    exchange = ExpertExchange(dist.group.WORLD)
    forced.experts.register_forward_pre_hook(exchange.dispatch)
    forced.experts.register_forward_hook(exchange.combine)
    return {"plain": layer, "EP = 1": ep1, "exchange forced": forced}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["vit-b"], choices=sorted(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/ep_overhead")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="tcp://127.0.0.1:29531",
                            rank=0, world_size=1)
    rows = []
    for size in args.sizes:
        s = SIZES[size]
        x = torch.randn(s.B, s.n, s.d, device=device, dtype=dtype, requires_grad=True)
        for kind, layer in layers(s, device, dtype).items():
            times = medians_ms(device, {name: lambda m=m: m(x).output.float().square().mean().backward()
                                        for name, m in variants(layer).items()}, args.reps, warmup=5)
            rows.append({"size": size, "layer": kind, **{f"{k} ms": round(v, 3) for k, v in times.items()},
                         **{f"{k} vs plain": round(v / times["plain"] - 1, 4) for k, v in times.items()
                            if k != "plain"}})
    dist.destroy_process_group()
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "dtype": args.dtype, "torch": torch.__version__, "reps": args.reps}
    report(args.out, env, rows, markdown_table(list(rows[0]), [list(r.values()) for r in rows]))

if __name__ == "__main__":
    main()
