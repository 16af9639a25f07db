"""Wall time of the paper's theory experiment on CPU against plain code on the same data, and what dominates it.

The paper's setting: N=1000 Fashion-MNIST patch canvases, 150 epochs (pmoe-separate: 100 router epochs first),
batch 20, plain SGD at lr 0.2. Per model, `--reps` alternating pairs of runs time
* ours: `pmoe.train.train` on the library's model (running train loss and accuracy, divergence watch, test metrics
  every `--eval-every` epochs and after the last);
* plain: the same model written as plain tensor code (`plain_logits`) with a bare SGD loop and one test evaluation
  at the end, from the same initial weights and the same mini-batch order (so both reach about the same accuracy).
Prints seconds per run (medians), their ratio, ms per SGD step of our model and its top ops; writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/theory_training.py --threads 1 --reps 3 --out benchmarks/results/theory_cpu1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import profile

from pmoe.data import PatchDataset
from pmoe.metrics import logistic_loss
from pmoe.models import build_theory_model, theory_config
from pmoe.runs import DataSpec
from pmoe.train import TrainConfig, train


def step_profile(model_name: str, data: PatchDataset, steps: int = 100) -> tuple[float, list[dict]]:
    """ms per SGD step (forward, backward, update) of our model and the ops that take the time."""
    model = build_theory_model(theory_config(model_name, data.n, data.d))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    x, y = data.x[:20], data.y[:20]

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


def plain_weights(model: torch.nn.Module) -> dict[str, Tensor]:
    """Copies of a theory model's initial weights as plain tensors: cnn w (m, d), a (m,); mixtures router (k, d),
    w1 (k, m, d), a (k, m) (output weights with their 1/l or 1/n)."""
    if model.config.model == "cnn":
        return {"w": model.w.detach().t().clone(memory_format=torch.contiguous_format), "a": model.a.clone()}
    bank = model.moe.experts
    return {"router": model.router.weight.detach().clone(), "w1": bank.w1.detach().clone(),
            "a": bank.w2.detach()[:, 0].clone()}


def plain_logits(name: str, p: dict[str, Tensor], x: Tensor, l: int) -> Tensor:
    """The theory models as plain code: x (B, n, d) -> (B,) logits."""
    if name == "cnn":
        return torch.relu(F.linear(x, p["w"])).mean(dim=1) @ p["a"]  # (B, n, m) -> (B,)
    top, idx = (x @ p["router"].t()).transpose(1, 2).topk(l, dim=-1)  # (B, k, l) top-l patches of each expert
    gates = top.softmax(dim=-1) if name == "pmoe" else torch.ones_like(top)
    xe = x[torch.arange(len(x)).view(-1, 1, 1), idx]  # (B, k, l, d)
    hidden = torch.relu(torch.einsum("bkld,kmd->bklm", xe, p["w1"]))
    return torch.einsum("bklm,km,bkl->b", hidden, p["a"], gates)


def plain_train(name: str, p: dict[str, Tensor], l: int, train_ds: PatchDataset, test_ds: PatchDataset,
                cfg: TrainConfig) -> float:
    """Train the plain model in place as `pmoe.train.train` does (same batches); returns the final test accuracy."""
    g = torch.Generator().manual_seed(cfg.seed)
    stages = [(cfg.epochs, [k for k in p if k != "a"], lambda x: plain_logits(name, p, x, l), logistic_loss)]
    if name == "pmoe-separate":  # routers first, as the linear model sum_j <w_1 - w_2, x_j>, then frozen
        stages = [(cfg.router_epochs, ["router"], lambda x: x.sum(dim=1) @ (p["router"][0] - p["router"][1]),
                   lambda f, y: -(y * f).mean()), (cfg.epochs, ["w1"], *stages[0][2:])]
    for epochs, names, forward, loss_fn in stages:
        params = [p[k].requires_grad_() for k in names]
        for _ in range(epochs):
            perm = torch.randperm(len(train_ds), generator=g)
            for i in range(0, len(train_ds), cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                loss_fn(forward(train_ds.x[idx]), train_ds.y[idx]).backward()
                with torch.no_grad():
                    for q in params:
                        q -= cfg.lr * q.grad
                        q.grad = None
        for q in params:
            q.requires_grad_(False)
    with torch.no_grad():
        return (torch.where(plain_logits(name, p, test_ds.x, l) > 0, 1.0, -1.0) == test_ds.y).float().mean().item()


def timed_pair(name: str, train_ds: PatchDataset, test_ds: PatchDataset, cfg: TrainConfig) -> dict:
    """One run of ours and one of plain code from the same initial weights: seconds and test accuracy of each."""
    model_cfg = theory_config(name, train_ds.n, train_ds.d)
    model = build_theory_model(model_cfg)
    p = plain_weights(model)
    start = time.perf_counter()
    history = train(model, train_ds, test_ds, cfg, progress=False)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    plain_acc = plain_train(name, p, model_cfg.l, train_ds, test_ds, cfg)
    return {"ours_s": ours, "plain_s": time.perf_counter() - start, "ours_acc": history[-1]["test_accuracy"],
            "plain_acc": plain_acc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn", "pmoe", "pmoe-separate"])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=1, help="alternating pairs of runs (ours, plain) per model")
    p.add_argument("--data-dir", help="folder of Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="our test evaluation every this many epochs (paper's code: 1); 0: after the last only")
    p.add_argument("--out", default="benchmarks/results/theory_cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = DataSpec("fashion-patches", args.samples, 2000, 0, {"data_dir": args.data_dir} if args.data_dir else {})
    train_ds, test_ds = data.make()
    cfg = TrainConfig(epochs=args.epochs, log_routing=False, eval_every=args.eval_every)
    rows = []
    for name in args.models:
        ms, top = step_profile(name, train_ds)
        pairs = [timed_pair(name, train_ds, test_ds, cfg) for _ in range(args.reps)]
        ours, plain = (statistics.median(r[key] for r in pairs) for key in ("ours_s", "plain_s"))
        rows.append({"model": name, "samples": args.samples, "epochs": args.epochs, "threads": args.threads,
                     "eval_every": args.eval_every, "reps": args.reps, "ours_seconds": round(ours, 2),
                     "plain_seconds": round(plain, 2), "ours_over_plain": round(ours / plain, 3),
                     "ours_runs": [round(r["ours_s"], 2) for r in pairs],
                     "plain_runs": [round(r["plain_s"], 2) for r in pairs],
                     "test_accuracy": pairs[0]["ours_acc"], "plain_test_accuracy": pairs[0]["plain_acc"],
                     "step_ms": round(ms, 3), "top_ops": top})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
