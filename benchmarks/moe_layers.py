"""Time routed MoE layers against the usual alternatives, forward and forward+backward, in one run.

Variants (DESIGN.md §5): `patch` ours (per-sample expert choice, gather -> batched experts -> scatter), `mask` the
official pMoE code (every expert over all n patches, masked), `loop` one Python iteration per expert, `dense` an MLP
of the same hidden width over all n patches, `token` ours (top-K=2 token choice with capacity and BPR), and the
bare expert matmuls of `patch` and `token` on pre-gathered inputs (the floor the dispatch overhead is measured
against: `bare matmuls` are the two expert matmuls alone on pre-gathered inputs in the compute dtype, `experts only`
adds bias and GELU). Prints and writes JSON + markdown: median ms, TFLOP/s of the expert matmuls (useful FLOPs: l of
n patches for ours; all n for the mask approach), the ratio to the bare matmuls, the share of time outside them, peak
memory; with device, dtype and versions.

    python benchmarks/moe_layers.py --sizes theory vit-s --device cpu --out benchmarks/results/cpu
    python benchmarks/moe_layers.py --sizes theory vit-s vit-b --device cuda --dtype bfloat16 --compile
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from pmoe.layers import MlpExperts, PatchMoE, TokenMoE
from pmoe.layers.reference import expert_loop_forward, masked_forward
from pmoe.reports import markdown_table


@dataclass
class Size:
    B: int  # samples
    n: int  # patches per sample
    d: int  # patch dimension
    h: int  # hidden width of one expert
    k: int  # experts
    l: int  # patches per expert per sample


SIZES = {
    "theory": Size(B=20, n=16, d=784, h=5, k=8, l=6),  # the paper's MNIST joint pMoE
    "small": Size(B=32, n=64, d=192, h=768, k=8, l=16),  # ViT-Ti width, n/l = 4
    "vit-s": Size(B=128, n=196, d=384, h=1536, k=8, l=49),
    "vit-b": Size(B=256, n=196, d=768, h=3072, k=8, l=49),  # each patch gets two experts on average
}


def timer(device: torch.device, reps: int, warmup: int):
    """Median milliseconds of fn() after warm-up (CUDA events on GPU)."""
    def run(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return run


def variants(s: Size, device: torch.device, dtype: torch.dtype, compile_: bool) -> dict:
    """name -> (forward fn of x, expert-matmul FLOPs of one forward)."""
    torch.manual_seed(0)
    experts = MlpExperts(s.k, s.d, s.h, s.d).to(device)
    patch = PatchMoE(experts, s.l).to(device)
    token = TokenMoE(MlpExperts(s.k, s.d, s.h, s.d), num_selected=2, capacity_factor=1.05, group_size=s.n).to(device)
    dense = nn.Sequential(nn.Linear(s.d, s.h), nn.GELU(), nn.Linear(s.h, s.d)).to(device)
    per_token = 2 * s.h * (s.d + s.d)  # multiply-adds x2 of one expert on one patch
    G, C = s.B, token.route(torch.randn(1, s.n, s.d, device=device)).capacity
    xe_patch = torch.randn(s.k, s.B * s.l, s.d, device=device, requires_grad=True)
    xe_token = torch.randn(s.k, G * C, s.d, device=device, requires_grad=True)
    xe_patch_c, xe_token_c = (t.detach().to(dtype).requires_grad_() for t in (xe_patch, xe_token))
    maybe = (lambda f: torch.compile(f, fullgraph=True)) if compile_ else (lambda f: f)
    w1, w2 = (w.detach().transpose(1, 2).contiguous().to(dtype).requires_grad_() for w in (experts.w1, experts.w2))

    def bare(xe):  # the two expert matmuls alone, already in the compute dtype
        return torch.bmm(torch.bmm(xe.to(dtype), w1), w2)

    fns = {
        "patch": (maybe(lambda x: patch(x).output), s.k * s.B * s.l * per_token),
        "patch experts only": (maybe(lambda x: experts(xe_patch)), s.k * s.B * s.l * per_token),
        "patch bare matmuls": (maybe(lambda x: bare(xe_patch_c)), s.k * s.B * s.l * per_token),
        "mask (official)": (maybe(lambda x: masked_forward(patch, x)), s.k * s.B * s.n * per_token),
        "loop over experts": (lambda x: expert_loop_forward(patch, x), s.k * s.B * s.l * per_token),
        "dense MLP": (maybe(dense), s.B * s.n * per_token),
        "token K=2": (maybe(lambda x: token(x).output), s.k * G * C * per_token),
        "token experts only": (maybe(lambda x: token.experts(xe_token)), s.k * G * C * per_token),
        "token bare matmuls": (maybe(lambda x: bare(xe_token_c)), s.k * G * C * per_token),
    }
    params = [*patch.parameters(), *token.parameters(), *dense.parameters(), xe_patch, xe_token, w1, w2,
              xe_patch_c, xe_token_c]
    return fns, params


def bench(name: str, s: Size, device: torch.device, dtype: torch.dtype, compile_: bool, reps: int) -> list[dict]:
    fns, params = variants(s, device, dtype, compile_)
    x = torch.randn(s.B, s.n, s.d, device=device, requires_grad=True)
    time_ms = timer(device, reps, warmup=3 if not compile_ else 5)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    rows = []
    for variant, (fn, flops) in fns.items():
        def fwd():
            with torch.no_grad(), autocast:
                fn(x)

        def fwd_bwd():
            with autocast:
                out = fn(x)
            out.float().square().mean().backward()
            for p in [x, *params]:
                p.grad = None

        rec = {"size": name, "variant": variant, **asdict(s), "expert_gflop_fwd": flops / 1e9}
        for mode, f, mult in (("fwd", fwd, 1), ("fwd+bwd", fwd_bwd, 3)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms = time_ms(f)
            rec[f"{mode}_ms"] = round(ms, 4)
            rec[f"{mode}_tflops"] = round(mult * flops / (ms * 1e-3) / 1e12, 3)
            if device.type == "cuda":
                rec[f"{mode}_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rows.append(rec)
    floor = {v: next(r for r in rows if r["variant"] == f"{v} bare matmuls") for v in ("patch", "token")}
    for r in rows:
        base = floor["token" if r["variant"].startswith("token") else "patch"]
        for mode in ("fwd", "fwd+bwd"):
            r[f"{mode}_over_bare"] = round(r[f"{mode}_ms"] / base[f"{mode}_ms"], 3)
            r[f"{mode}_outside_matmuls"] = round(1 - base[f"{mode}_ms"] / r[f"{mode}_ms"], 3)
    return rows


def matmul_rate(device: torch.device, dtype: torch.dtype, reps: int) -> float:
    """TFLOP/s of a large square matmul: the card's (or CPU's) practical peak for this dtype."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms = timer(device, reps, 3)(lambda: a @ b)
    return round(2 * n ** 3 / (ms * 1e-3) / 1e12, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["theory", "vit-s"], choices=sorted(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True) every variant but the loop")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/moe_layers")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "dtype": args.dtype, "compile": args.compile,
           "torch": torch.__version__, "python": platform.python_version(),
           "matmul_tflops": matmul_rate(device, dtype, args.reps)}
    rows = [r for name in args.sizes for r in bench(name, SIZES[name], device, dtype, args.compile, args.reps)]
    headers = ["size", "variant", "fwd ms", "fwd+bwd ms", "TFLOP/s fwd+bwd", "x bare matmuls (fwd+bwd)",
               "time outside matmuls", "peak MiB"]
    table = markdown_table(headers, [[r["size"], r["variant"], r["fwd_ms"], r["fwd+bwd_ms"], r["fwd+bwd_tflops"],
                                      r["fwd+bwd_over_bare"], f"{r['fwd+bwd_outside_matmuls']:.0%}",
                                      r.get("fwd+bwd_peak_mib", "-")] for r in rows])
    report(args.out, env, rows, table)


def report(out: str, env: dict, rows: list[dict], table: str) -> None:
    """Print the environment line and `table`; write OUT.json (env, rows) and OUT.md (the same text)."""
    head = ", ".join(f"{k}={v}" for k, v in env.items())
    print(head + "\n\n" + table)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    path.with_suffix(".md").write_text(f"{head}\n\n{table}")


if __name__ == "__main__":
    main()
