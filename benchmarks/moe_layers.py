"""Time routed MoE layers against the usual alternatives, forward and forward+backward, in one run.

Variants (DESIGN.md §5): `patch` ours (per-sample expert choice, gather -> batched experts -> scatter), `patch fused`
the same layer with `dispatch="fused"` (gather, experts, gate and scatter in Triton kernels; on CPU it gathers),
`straightforward` the same layer written plainly in 20 lines (topk, gather, bmm, GELU, bmm, gate, index_add; its own
copy of the weights laid out (k, in, out) as such code holds them), `mask` the official pMoE code (every expert over
all n patches, masked), `loop` one Python iteration per expert, `dense` an MLP of the same hidden width over all n
patches, `token` ours (top-K=2 token choice with capacity and BPR), and the bare expert matmuls of `patch` and
`token` on pre-gathered inputs (the floor the dispatch overhead is measured against: `bare matmuls` are the two
expert matmuls alone on pre-gathered inputs in the compute dtype, `experts only` adds bias and GELU). Prints and
writes JSON + markdown: median ms (the variants called in turn, round robin), TFLOP/s of the expert matmuls (useful
FLOPs: l of n patches for ours; all n for the mask approach), the ratio to the bare matmuls, the share of time
outside them, peak memory above what the inputs and weights hold (CUDA); with device, dtype and versions.
`--profile` adds the top ops by device time of fwd+bwd. On CPU, set MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_
high (BENCHMARKS.md): glibc otherwise returns freed buffers to the kernel, and fresh pages make times depend on order.

    python benchmarks/moe_layers.py --sizes theory vit-s --device cpu --out benchmarks/results/cpu
    python benchmarks/moe_layers.py --sizes theory vit-s vit-b --device cuda --dtype bfloat16 --compile
    python benchmarks/moe_layers.py --sizes vit-b --dtype bfloat16 --weights bfloat16 --no-bias  # issue 16's setting
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from pmoe.layers import MlpExperts, PatchMoE, TokenMoE
from pmoe.layers import moe as moe_module
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


def call_ms(device: torch.device, fn: Callable[[], None]) -> float:
    """Milliseconds of one call of fn (CUDA events on GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def medians_ms(device: torch.device, fns: dict[str, Callable[[], None]], reps: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of each fn after warm-up, the fns called in turn (round robin), so that a slow spell of
    a shared machine hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(call_ms(device, fn))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_mib(device: torch.device, fn: Callable[[], None]) -> float:
    """MiB that one call of fn allocates at its peak above what is held before it (CUDA)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()  # inputs and weights, no grads
    fn()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - held) / 2**20, 1)


def straightforward(layer: PatchMoE) -> tuple[Callable[[Tensor], Tensor], list[Tensor]]:
    """The straightforward 20-line layer computing `layer` (MlpExperts with GELU, sum combine, softmax over the
    selected scores), on copies of its weights laid out as plain code holds them: w1 (k, d, h), w2 (k, h, d_out).
    Returns (forward: x (B, n, d) -> (B, n, d_out), its weights)."""
    bank = layer.experts
    router = layer.router.weight.detach().clone().requires_grad_()  # (k, d)
    w1, w2 = (w.detach().transpose(1, 2).contiguous().requires_grad_() for w in (bank.w1, bank.w2))
    b1, b2 = (None if b is None else b.detach().clone().requires_grad_() for b in (bank.b1, bank.b2))

    def affine(b: Tensor | None, x: Tensor, w: Tensor) -> Tensor:
        return torch.bmm(x, w) if b is None else torch.baddbmm(b, x, w)

    def forward(x: Tensor) -> Tensor:
        B, n, d = x.shape
        k, l = w1.shape[0], layer.l
        top, idx = (x @ router.t()).transpose(1, 2).topk(l, dim=-1)  # (B, k, l)
        rows = (idx + torch.arange(B, device=x.device).view(B, 1, 1) * n).transpose(0, 1).reshape(-1)  # (k*B*l,)
        xe = x.reshape(B * n, d)[rows].view(k, B * l, d)
        ye = affine(b2, F.gelu(affine(b1, xe, w1)), w2)  # (k, B*l, d_out)
        ye = ye * top.softmax(dim=-1).transpose(0, 1).reshape(k, B * l, 1).to(ye.dtype)
        return ye.new_zeros(B * n, ye.shape[-1]).index_add_(0, rows, ye.view(k * B * l, -1)).view(B, n, -1)

    return forward, [p for p in (router, w1, w2, b1, b2) if p is not None]


def variants(s: Size, device: torch.device, dtype: torch.dtype, weights: torch.dtype, bias: bool,
             compile_: str | None) -> tuple[dict, list[Tensor]]:
    """name -> (forward fn of x, expert-matmul FLOPs of one forward); and the tensors whose grads to drop."""
    torch.manual_seed(0)
    experts = MlpExperts(s.k, s.d, s.h, s.d, bias=bias).to(device, weights)
    patch = PatchMoE(experts, s.l).to(device, weights)
    fused = PatchMoE(experts, s.l, dispatch="fused").to(device, weights)
    fused.router = patch.router  # the same layer, run by the fused kernels (CUDA; on CPU it gathers)
    plain, plain_weights = straightforward(patch)
    for layer in (patch, fused):
        check_same(layer, plain, torch.randn(min(s.B, 8), s.n, s.d, device=device, dtype=weights))
    token = TokenMoE(MlpExperts(s.k, s.d, s.h, s.d, bias=bias), num_selected=2, capacity_factor=1.05,
                     group_size=s.n).to(device, weights)
    dense = nn.Sequential(nn.Linear(s.d, s.h, bias=bias), nn.GELU(), nn.Linear(s.h, s.d, bias=bias)).to(device, weights)
    per_token = 2 * s.h * (s.d + s.d)  # multiply-adds x2 of one expert on one patch
    G, C = s.B, token.route(torch.randn(1, s.n, s.d, device=device, dtype=weights)).capacity
    xe_patch = torch.randn(s.k, s.B * s.l, s.d, device=device, dtype=weights, requires_grad=True)
    xe_token = torch.randn(s.k, G * C, s.d, device=device, dtype=weights, requires_grad=True)
    xe_patch_c, xe_token_c = (t.detach().to(dtype).requires_grad_() for t in (xe_patch, xe_token))
    maybe = (lambda f: torch.compile(f, fullgraph=True, dynamic=False, mode=compile_)) if compile_ else (lambda f: f)
    w1, w2 = (w.detach().transpose(1, 2).contiguous().to(dtype).requires_grad_() for w in (experts.w1, experts.w2))

    def bare(xe):  # the two expert matmuls alone, already in the compute dtype
        return torch.bmm(torch.bmm(xe.to(dtype), w1), w2)

    fns = {
        "patch": (maybe(lambda x: patch(x).output), s.k * s.B * s.l * per_token),
        "patch fused": (maybe(lambda x: fused(x).output), s.k * s.B * s.l * per_token),
        "straightforward": (maybe(plain), s.k * s.B * s.l * per_token),
        "patch experts only": (maybe(lambda x: experts(xe_patch)), s.k * s.B * s.l * per_token),
        "patch bare matmuls": (maybe(lambda x: bare(xe_patch_c)), s.k * s.B * s.l * per_token),
        "mask (official)": (maybe(lambda x: masked_forward(patch, x)), s.k * s.B * s.n * per_token),
        "loop over experts": (lambda x: expert_loop_forward(patch, x), s.k * s.B * s.l * per_token),
        "dense MLP": (maybe(dense), s.B * s.n * per_token),
        "token K=2": (maybe(lambda x: token(x).output), s.k * G * C * per_token),
        "token experts only": (maybe(lambda x: token.experts(xe_token)), s.k * G * C * per_token),
        "token bare matmuls": (maybe(lambda x: bare(xe_token_c)), s.k * G * C * per_token),
    }
    params = [*patch.parameters(), *plain_weights, *token.parameters(), *dense.parameters(), xe_patch, xe_token,
              w1, w2, xe_patch_c, xe_token_c]
    return fns, params


def check_same(layer: PatchMoE, plain: Callable[[Tensor], Tensor], x: Tensor) -> None:
    """The straightforward layer computes what `layer` does (no autocast; loose for bf16 weights)."""
    tol = {} if x.dtype == torch.float32 else {"atol": 0.05, "rtol": 0.05}
    with torch.no_grad():
        torch.testing.assert_close(plain(x), layer(x).output, **tol)


def top_ops(fn: Callable[[], None], device: torch.device, steps: int = 5) -> list[dict]:
    """The 12 ops that take most device time (CPU time on CPU) in `steps` calls of fn, with their share."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events)
    return [{"op": e.key[:60], "us_per_call": round(getattr(e, attr) / steps, 1),
             "share": round(getattr(e, attr) / total, 3)}
            for e in sorted(events, key=lambda e: -getattr(e, attr))[:12]]


def bench(name: str, s: Size, device: torch.device, dtype: torch.dtype, weights: torch.dtype, bias: bool,
          compile_: str | None, reps: int, only: list[str] | None, profiled: list[str]) -> list[dict]:
    torch._dynamo.reset()  # each size compiles afresh, with static shapes
    fns, params = variants(s, device, dtype, weights, bias, compile_)
    x = torch.randn(s.B, s.n, s.d, device=device, dtype=weights, requires_grad=True)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != weights)

    def fwd(fn: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), autocast:
                fn(x)
        return run

    def fwd_bwd(fn: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            with autocast:
                out = fn(x)
            out.float().square().mean().backward()
            for p in [x, *params]:
                p.grad = None
        return run

    chosen = {v: f for v, f in fns.items() if not only or v in only or v.endswith("bare matmuls")}
    rows = [{"size": name, "variant": v, **asdict(s), "expert_gflop_fwd": flops / 1e9}
            for v, (_, flops) in chosen.items()]
    for mode, wrap, mult in (("fwd", fwd, 1), ("fwd+bwd", fwd_bwd, 3)):
        calls = {v: wrap(fn) for v, (fn, _) in chosen.items()}
        ms = medians_ms(device, calls, reps, warmup=3 if not compile_ else 5)
        for rec in rows:
            v = rec["variant"]
            rec[f"{mode}_ms"] = round(ms[v], 4)
            rec[f"{mode}_tflops"] = round(mult * chosen[v][1] / (ms[v] * 1e-3) / 1e12, 3)
            if device.type == "cuda":
                rec[f"{mode}_peak_mib"] = peak_mib(device, calls[v])
            if mode == "fwd+bwd" and v in profiled:
                rec["top_ops_fwd+bwd"] = top_ops(calls[v], device)
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
    ms = medians_ms(device, {"mm": lambda: a @ b}, reps, 3)["mm"]
    return round(2 * n ** 3 / (ms * 1e-3) / 1e12, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["theory", "vit-s"], choices=sorted(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--weights", default="float32", choices=["float32", "bfloat16"],
                   help="weights and inputs; autocast to --dtype where they differ")
    p.add_argument("--no-bias", dest="bias", action="store_false", help="experts and dense MLP without biases")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile(fullgraph=True, dynamic=False, mode=MODE) every variant but the loop (MODE: "
                        "default, max-autotune, ...; Inductor's max-autotune can fuse epilogues into GEMM templates)")
    p.add_argument("--variants", nargs="+", help="time only these (and the bare matmuls, the floors)")
    p.add_argument("--profile", nargs="*", default=[], metavar="VARIANT", help="add these variants' top ops")
    p.add_argument("--sorted-min", type=int, metavar="ELEMENTS",
                   help="pmoe.layers.moe.SORTED_SCATTER_MIN for this run (where CUDA row sums start to sort)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/moe_layers")
    args = p.parse_args()
    if args.sorted_min is not None:
        moe_module.SORTED_SCATTER_MIN = args.sorted_min
    if args.weights == "bfloat16" and args.dtype != "bfloat16":
        p.error("--weights bfloat16 computes in bfloat16: give --dtype bfloat16 too")
    device, dtype, weights = torch.device(args.device), getattr(torch, args.dtype), getattr(torch, args.weights)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "dtype": args.dtype, "weights": args.weights, "bias": args.bias,
           "compile": args.compile, "sorted_min": moe_module.SORTED_SCATTER_MIN, "torch": torch.__version__,
           "python": platform.python_version(),
           "matmul_tflops": matmul_rate(device, dtype, args.reps)}
    rows: list[dict] = []
    for name in args.sizes:  # the report is rewritten after every size: a run cut short keeps what it measured
        rows += bench(name, SIZES[name], device, dtype, weights, args.bias, args.compile, args.reps, args.variants,
                      args.profile)
        report(args.out, env, rows, results_table(rows), final=name == args.sizes[-1])


def results_table(rows: list[dict]) -> str:
    """Markdown: one line per (size, variant), then the top ops of the profiled ones."""
    headers = ["size", "variant", "fwd ms", "fwd+bwd ms", "TFLOP/s fwd+bwd", "x bare matmuls (fwd+bwd)",
               "time outside matmuls", "peak MiB over inputs"]
    table = markdown_table(headers, [[r["size"], r["variant"], r["fwd_ms"], r["fwd+bwd_ms"], r["fwd+bwd_tflops"],
                                      r["fwd+bwd_over_bare"], f"{r['fwd+bwd_outside_matmuls']:.0%}",
                                      r.get("fwd+bwd_peak_mib", "-")] for r in rows])
    for r in rows:
        if "top_ops_fwd+bwd" in r:
            table += f"\nTop ops of {r['variant']} at {r['size']} (fwd+bwd, per call):\n\n" + markdown_table(
                ["op", "us", "share"], [[o["op"], o["us_per_call"], f"{o['share']:.0%}"] for o in r["top_ops_fwd+bwd"]])
    return table


def report(out: str, env: dict, rows: list[dict], table: str, final: bool = True) -> None:
    """Write OUT.json (env, rows) and OUT.md (the environment line and `table`); print them if `final`."""
    head = ", ".join(f"{k}={v}" for k, v in env.items())
    if final:
        print(head + "\n\n" + table)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    path.with_suffix(".md").write_text(f"{head}\n\n{table}")


if __name__ == "__main__":
    main()
