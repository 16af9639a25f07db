"""Discriminative routing over training (pMoE, ICML 2023): how often the routers pick the class patch.

Trains joint pMoE and separate pMoE on the patch-canvas task (or synthetic data) and records, at the initial weights
(epoch 0) and after every epoch of router training, how often the best expert of each class takes that class's
discriminative patch in the test set, with the test accuracy. Chance: that max over k experts if each took l random
patches (`chance_best_expert`), and l/n for one expert; random routers at initialisation can already be far above
both. Joint pMoE's routers train with its experts; separate pMoE's routers train first (its later epochs keep them
frozen).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pmoe.errors import check
from pmoe.experiments.flags import add_out, add_theory_args, add_workers, theory_changes
from pmoe.experiments.runner import Job, run_jobs
from pmoe.experiments.sample_complexity import parse_model
from pmoe.io import write_json, write_text
from pmoe.reports import line_plot, markdown_table, mean_std
from pmoe.runs.theory import DataSpec
from pmoe.train import TrainConfig

NAME = "routing"
HELP = "discriminative routing over training: routers' hit rate of the class patch"
COUNT = "runs"


@dataclass
class RoutingDynamicsConfig:
    data: str = "fashion-patches"  # or synthetic
    samples: int = 1000  # N, training samples
    test_samples: int = 2000
    seeds: int = 5
    epochs: int = 150  # joint pMoE and separate pMoE's expert stage
    router_epochs: int = 100  # separate pMoE's router stage
    models: list[str] = field(default_factory=lambda: ["pmoe", "pmoe-separate"])
    data_options: dict = field(default_factory=dict)


QUICK = RoutingDynamicsConfig(samples=300, test_samples=1000, seeds=2, epochs=30, router_epochs=20)


def _curve(run: dict) -> list[dict]:
    """Hit rates at the initial weights (epoch 0, no accuracy) and after each epoch in which the routers trained."""
    stage = "routers" if run["model"] == "pmoe-separate" else "train"
    initial = run["routing"]["initial"]
    return [{"epoch": 0, "best_expert": initial["best_expert"], "any_expert": initial["any_expert"]}] + [
        {"epoch": c["epoch"], "best_expert": c["routing"]["best_expert"], "any_expert": c["routing"]["any_expert"],
         "test_accuracy": c["test_accuracy"]} for c in run.pop("history") if c["stage"] == stage]


def run_experiment(cfg: RoutingDynamicsConfig, out_dir: str | Path, workers: int | None = None,
                   progress: bool = True) -> dict:
    """Run, then write results.json, routing_over_training.png, accuracy_over_training.png and results.md."""
    check(cfg.seeds >= 1 and cfg.epochs >= 1 and cfg.router_epochs >= 1,
          f"need seeds, epochs and router_epochs >= 1, got {cfg.seeds}, {cfg.epochs}, {cfg.router_epochs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = DataSpec(cfg.data, cfg.samples, cfg.test_samples, 0, cfg.data_options)
    jobs = []
    for spec in cfg.models:
        name, options = parse_model(spec)
        check(name != "cnn", "the CNN has no routers; compare pmoe and pmoe-separate (with overrides)")
        jobs += [Job(name, data, TrainConfig(epochs=cfg.epochs, router_epochs=cfg.router_epochs, seed=s, eval_every=1),
                     options, tags={"spec": spec}, history=True) for s in range(cfg.seeds)]
    runs = run_jobs(jobs, workers, progress)
    for r in runs:
        r["curve"] = _curve(r)
    curves = {m: [r["curve"] for r in runs if r["spec"] == m] for m in cfg.models}
    routing = {m: next(r["routing"] for r in runs if r["spec"] == m) for m in cfg.models}

    def series(key: str) -> dict[str, tuple[list, list, list]]:
        out_ = {}
        for m, cs in curves.items():
            by_epoch = [{rec["epoch"]: rec[key] for rec in c if key in rec} for c in cs]
            epochs = sorted(by_epoch[0])
            stats = [mean_std([b[e] for b in by_epoch]) for e in epochs]
            out_[m] = (epochs, [a for a, _ in stats], [b for _, b in stats])
        return out_

    hit = series("best_expert")
    acc = series("test_accuracy")
    title = f"{cfg.data}, N={cfg.samples}, mean ± std over {cfg.seeds} seeds"
    line_plot(out / "routing_over_training.png", hit, "epoch of router training (0: initial weights)",
              "best expert's hit rate of the class patch", title)
    line_plot(out / "accuracy_over_training.png", acc, "epoch of router training", "test accuracy", title)
    marks = sorted({e for m in cfg.models for e in hit[m][0] if e in (0, 1, 2, 5, 10, 20, 30, 50, 100, 150)
                    or e == hit[m][0][-1]})
    rows = [[e] + [f"{hit[m][1][hit[m][0].index(e)]:.3f} / "
                   + (f"{acc[m][1][acc[m][0].index(e)]:.3f}" if e in acc[m][0] else "–")
                   if e in hit[m][0] else "–" for m in cfg.models] for e in marks]
    chance = ", ".join(f"{m} {routing[m]['chance_best_expert']:.3f} for the best of {len(routing[m]['per_expert'])} "
                       f"experts, {routing[m]['chance']:.3f} = l/n for one" for m in cfg.models)
    report = ("Best expert's hit rate of the discriminative patch / test accuracy, mean over seeds; epoch 0: the "
              f"initial weights (chance under random routing: {chance}):\n\n"
              + markdown_table(["epoch"] + cfg.models, rows))
    seconds = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", {"config": asdict(cfg), "seconds": seconds, "runs": runs})
    write_text(out / "results.md", f"# Discriminative routing over training\n\n{report}\n\nWall time: {seconds} s.\n")
    return {"seconds": seconds, "runs": len(runs), "report": report, "out": str(out)}


def preset(quick: bool) -> RoutingDynamicsConfig:
    return replace(QUICK if quick else RoutingDynamicsConfig())


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p)
    p.add_argument("--quick", action="store_true", help="N=300, 2 seeds, 30 epochs (about a minute on 2 cores)")
    add_theory_args(p, data="default: fashion-patches", samples={"help": "training samples N"},
                    seeds="seeds per model", epochs="training epochs",
                    models="pmoe, pmoe-separate, with overrides (pmoe:l=2)")
    add_workers(p)


def config(args: argparse.Namespace) -> RoutingDynamicsConfig:
    cfg = preset(args.quick)
    return replace(cfg, **theory_changes(args, cfg.data_options))
