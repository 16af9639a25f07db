"""Time each GEMM of the fused patch layer (`pmoe.layers.fused`) alone beside the cuBLAS GEMM of the same shape on
pre-gathered rows: the Triton kernels at several tile sizes (which suit each epilogue), the weight gradients (cuBLAS
over routed copies) with their gathers. Which GEMM keeps `PatchMoE(dispatch="fused")` from the floor. Sizes as in
benchmarks/moe_layers.py; bf16; median ms of --reps calls in turn.

    python benchmarks/fused_kernels.py --size vit-b --out benchmarks/results/fused_kernels_h200
    TRITON_INTERPRET=1 python benchmarks/fused_kernels.py --size tiny --reps 1 --device cpu --dtype float32  # runs
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch

from pmoe.layers import fused
from pmoe.reports import markdown_table

from moe_layers import SIZES, Size, medians_ms  # benchmarks/ is on sys.path when run as a script

SIZES = {**SIZES, "tiny": Size(B=4, n=16, d=32, h=48, k=2, l=8)}
GEMM_TILES = [  # BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages
    (128, 128, 64, 8, 4, 3), (128, 128, 64, 8, 8, 4), (128, 256, 64, 8, 8, 3), (256, 128, 64, 8, 8, 3),
    (64, 128, 64, 8, 4, 4), (128, 64, 64, 8, 4, 4),
]


def kernel_calls(s: Size, device: torch.device, dtype: torch.dtype) -> dict[str, tuple[Callable, Callable, float]]:
    """name -> (the fused kernel's call, cuBLAS's call of the same GEMM on pre-gathered rows, GFLOP)."""
    g = torch.Generator(device).manual_seed(0)
    M = s.B * s.l

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype, generator=g) * 0.1

    x, dout = rand(s.B * s.n, s.d), rand(s.B * s.n, s.d)
    idx = torch.rand(s.B, s.k, s.n, device=device, generator=g).topk(s.l, dim=-1).indices  # (B, k, l)
    rows = (idx + torch.arange(0, s.B * s.n, s.n, device=device).view(-1, 1, 1)).transpose(0, 1).reshape(-1)
    gates = torch.rand(s.k * M, device=device, generator=g)
    w1, w2 = rand(s.k, s.h, s.d), rand(s.k, s.d, s.h)
    z, a, dz = rand(s.k * M, s.h), rand(s.k * M, s.h), rand(s.k * M, s.h)
    out, dx = (torch.zeros(s.B * s.n, s.d, device=device) for _ in range(2))
    dgate = torch.zeros(s.k * M, device=device)
    xg, doutg = x[rows].view(s.k, M, s.d), dout[rows].view(s.k, M, s.d)  # the gathered copies cuBLAS needs
    zv, dzv = z.view(s.k, M, s.h), dz.view(s.k, M, s.h)
    gflop = 2 * s.k * M * s.d * s.h / 1e9
    return {
        "fwd: gather, GEMM 1, bias, GELU": (
            lambda: fused.rows_gemm(x, w1.transpose(1, 2), M, fused.STORE_ACT, z, a_rows=rows, c2=a, act=fused.GELU),
            lambda: torch.bmm(xg, w1.transpose(1, 2)), gflop),
        "fwd: GEMM 2, gate, scatter": (
            lambda: fused.rows_gemm(a, w2.transpose(1, 2), M, fused.SCATTER_ADD, out, gate=gates, c_rows=rows,
                                    act=fused.GELU),
            lambda: torch.bmm(zv, w2.transpose(1, 2)), gflop),
        "bwd: gather, dgrad 2, gate, GELU'": (
            lambda: fused.rows_gemm(dout, w2, M, fused.ACT_BACKWARD, dz, a_rows=rows, gate=gates, c2=z, c3=a,
                                    dgate=dgate, act=fused.GELU),
            lambda: torch.bmm(doutg, w2), gflop),
        "bwd: wgrad 2, gathered and gated copy": (
            lambda: fused.rows_wgrad(dout, a, s.k, p_rows=rows, scale=gates),
            lambda: torch.bmm(doutg.transpose(1, 2), zv), gflop),
        "bwd: dgrad 1, scatter": (
            lambda: fused.rows_gemm(dz, w1, M, fused.SCATTER_ADD, dx, c_rows=rows, act=fused.GELU),
            lambda: torch.bmm(dzv, w1), gflop),
        "bwd: wgrad 1, gathered copy": (
            lambda: fused.rows_wgrad(dz, x, s.k, q_rows=rows),
            lambda: torch.bmm(dzv.transpose(1, 2), xg), gflop),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="vit-b", choices=sorted(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/fused_kernels")
    args = p.parse_args()
    device, dtype, s = torch.device(args.device), getattr(torch, args.dtype), SIZES[args.size]
    calls = kernel_calls(s, device, dtype)
    cublas = medians_ms(device, {name: c[1] for name, c in calls.items()}, args.reps, warmup=3)
    rows = []
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
    for name, (call, _, gflop) in calls.items():
        for tiles in ([None] if "wgrad" in name else GEMM_TILES):  # the weight gradients run on cuBLAS
            config = {"gemm": "cuBLAS on routed copies"} if tiles is None else dict(zip(keys, tiles))
            if tiles is not None:
                fused.GEMM_TILES = dict.fromkeys(fused.EPILOGUES, config)
            ms = medians_ms(device, {name: call}, args.reps, warmup=2)[name]
            rows.append({"kernel": name, "tiles": config, "ms": round(ms, 4), "cublas_ms": round(cublas[name], 4),
                         "tflops": round(gflop / ms, 1), "vs_cublas": round(ms / cublas[name], 3)})
            print(json.dumps(rows[-1]), flush=True)
    best = {r["kernel"]: r for r in sorted(rows, key=lambda r: -r["ms"])}  # the fastest tiles last, so kept
    table = markdown_table(["kernel", "best tiles", "ms", "cuBLAS on gathered rows ms", "× cuBLAS", "TFLOP/s"],
                           [[k, " ".join(str(v) for v in r["tiles"].values()), r["ms"], r["cublas_ms"],
                             r["vs_cublas"], r["tflops"]] for k, r in best.items()])
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "size": args.size, "dtype": args.dtype}
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(", ".join(f"{k}={v}" for k, v in env.items()) + "\n\n" + table)


if __name__ == "__main__":
    main()
