"""Wall time of one run of the paper's theory experiment on CPU, and what dominates it.

The paper's setting: joint pMoE (8 experts x 5 neurons, l=6) on N=1000 Fashion-MNIST patch canvases, 150 epochs,
batch 20, plain SGD, with a test evaluation every epoch. Prints seconds per run, ms per SGD step, and the top ops of
a profiled slice of training; writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/theory_training.py --threads 1 --out benchmarks/results/theory_cpu1
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import profile

from pmoe.metrics import logistic_loss
from pmoe.models import build_theory_model, theory_config
from pmoe.runs import DataSpec, run
from pmoe.train import TrainConfig


def step_profile(model_name: str, data: DataSpec, steps: int = 100) -> tuple[float, list[dict]]:
    """ms per SGD step (forward, backward, update) and the ops that take the time."""
    train_ds, _ = data.make()
    model = build_theory_model(theory_config(model_name, train_ds.n, train_ds.d))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    x, y = train_ds.x[:20], train_ds.y[:20]

    def step() -> None:
        loss = logistic_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    ms = (time.perf_counter() - start) / steps * 1e3
    with profile() as prof:
        for _ in range(steps):
            step()
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    return ms, [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls_per_step": e.count // steps}
                for e in top]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn", "pmoe", "pmoe-separate"])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", help="folder of Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--eval-every", type=int, default=1, help="test evaluation every this many epochs (paper: 1)")
    p.add_argument("--out", default="benchmarks/results/theory_cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = DataSpec("fashion-patches", args.samples, 2000, 0, {"data_dir": args.data_dir} if args.data_dir else {})
    rows = []
    for name in args.models:
        ms, top = step_profile(name, data)
        start = time.perf_counter()
        cfg = TrainConfig(epochs=args.epochs, log_routing=False, eval_every=args.eval_every)
        result = run(name, data, cfg, progress=False)
        rows.append({"model": name, "samples": args.samples, "epochs": args.epochs, "threads": args.threads,
                     "eval_every": args.eval_every,
                     "run_seconds": round(time.perf_counter() - start, 2), "step_ms": round(ms, 3),
                     "test_accuracy": result["test_accuracy"], "top_ops": top})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
