"""Spurious correlations (pMoE paper, CelebA "spurious smiling"): a dense WRN against WRN-pMoE, trained where a
nuisance attribute agrees with the binary label in 95% of each class and tested where it is independent of it (50/50):
average and worst-group test accuracy (groups: label x nuisance), mean ± std over seeds, for each training-set size N.

Data: `fashion-spurious` (Fashion-MNIST {T-shirt, Pullover} vs {Coat, Shirt}; nuisance: a white 4x4 stamp in the
top-left corner), or `celeba-spurious` (the paper's: Smiling vs not, nuisance blond vs black hair; CelebA on disk).
N training images: a class-balanced random subset of the 95/5 train split, fixed across training seeds (so each
class holds about 5% nuisance-disagreeing images). Training: each preset's recipe (`pmoe.train.recipes`; WRN: SGD
lr 0.1, momentum 0.9, weight decay 5e-4, cosine, batch 128, 50 epochs), never with augmentation (a crop would move
the stamp). Every run is saved in OUT/runs/MODEL/N<N>-seed<S> (`pmoe eval`, `pmoe route --png`); an interrupted
experiment re-run with the same flags resumes its runs.

`--strengths`: a sweep of the nuisance's strength, the share of each class whose nuisance agrees with its label in
training (the data set's `train_ratio`; 0.95 by default, 0.5: no correlation), every strength with the N grid, its
runs in OUT/runs/train_ratio=R/MODEL/N<N>-seed<S>, all of them trained in one pool of workers; the report adds
average and worst-group accuracy against the strength.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pmoe.data.vision import SpuriousConfig
from pmoe.errors import check
from pmoe.experiments.image_sweep import (AUTHORS_LAYOUT, ImageSweepConfig, add_sweep_args, group_runs, run_sweeps,
                                         summarize, sweep_config)
from pmoe.io import atomic_path, write_json, write_text
from pmoe.reports import line_plot, markdown_table, mean_std, plt

NAME = "spurious"
HELP = "dense WRN vs WRN-pMoE under a spurious correlation: worst-group accuracy"
COUNT = "runs"
DATASETS = ("fashion-spurious", "celeba-spurious")
METRICS = ("test_accuracy", "worst_group_accuracy")  # average and worst-group test accuracy


@dataclass
class SpuriousSweepConfig(ImageSweepConfig):
    """An image sweep, optionally repeated at several strengths of the nuisance."""

    strengths: list[float] | None = None  # train_ratio values swept; None: the data's own (0.95), runs in OUT/runs

    def train_ratio(self) -> float:
        """The share of each class whose nuisance agrees with its label in training, in this (strength's) sweep."""
        return self.data_options.get("train_ratio", SpuriousConfig.train_ratio)

    def sweeps(self) -> dict[str, SpuriousSweepConfig]:
        """Runs' folder (relative to the report's) -> the sweep of one strength."""
        if self.strengths is None:
            return {"runs": self}
        return {f"runs/train_ratio={r:g}": replace(self, strengths=None, data_options={**self.data_options,
                                                                                       "train_ratio": r})
                for r in self.strengths}


# Fashion: the tiny pair, both zero-padding 28x28 into 32x32 (the pMoE's 4x4 regions of 8x8 px: the stamp is in one);
# 8 filters per expert, wrn-pmoe-tiny's width when REPRODUCTION §5 was measured (the preset has 16 since).
FASHION = SpuriousSweepConfig(data="fashion-spurious",
                              models=["wrn-tiny", f"wrn-pmoe-tiny:expert_channels=8,{AUTHORS_LAYOUT}"],
                              model_options={"input_size": 28}, samples=[1000, 2000, 4000, 8000, 12000], seeds=5,
                              epochs=50, augment=False)
FASHION_QUICK = replace(FASHION, models=["wrn-tiny", "wrn-pmoe-tiny"], samples=[800], test_samples=500, seeds=2,
                        epochs=4, batch_size=64)
# CelebA 64x64: the paper's WRN-10-10 pair (pMoE: 8 experts, n=16 regions of 4x4 of the 16x16 map, l=2).
CELEBA = SpuriousSweepConfig(data="celeba-spurious", models=["wrn-celeba", "wrn-pmoe-celeba"],
                             samples=[2000, 4000, 8000, 16000], seeds=5, epochs=50, augment=False)
CELEBA_QUICK = replace(CELEBA, models=["wrn-tiny", "wrn-pmoe-tiny"], samples=[800], test_samples=500, seeds=2,
                       epochs=4, batch_size=64)


def strength(text: str) -> float:
    """argparse type: a share in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def preset(data: str | None, quick: bool) -> SpuriousSweepConfig:
    data = data or DATASETS[0]
    check(data in DATASETS, f"spurious data must be one of {DATASETS}, got {data!r}")
    base = {(False, False): FASHION, (False, True): FASHION_QUICK, (True, False): CELEBA, (True, True): CELEBA_QUICK}
    return replace(base[data == "celeba-spurious", quick])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sweep_args(p, f"one of {', '.join(DATASETS)} (default: {DATASETS[0]})")
    p.add_argument("--strengths", type=strength, nargs="+", metavar="RATIO", help="sweep the nuisance's strength: "
                   "the share of each class whose nuisance agrees with the label in training (default: the data's "
                   f"{SpuriousConfig.train_ratio}), e.g. 0.75 0.9 0.95 0.99")


def config(args: argparse.Namespace) -> SpuriousSweepConfig:
    cfg = sweep_config(preset(args.data, args.quick), args)
    check(args.strengths is None or len(set(args.strengths)) == len(args.strengths),
          f"--strengths must differ from each other, got {args.strengths}")
    return replace(cfg, strengths=sorted(args.strengths) if args.strengths else None)


def group_means(results: list[dict]) -> dict[tuple[str, int], dict[str, float]]:
    """(model, N) -> {group: mean test accuracy over seeds}."""
    return {key: {g: mean_std([r["group_accuracy"][g] for r in rs])[0] for g in rs[0]["group_accuracy"]}
            for key, rs in group_runs(results).items()}


def bar_plot(path: Path, cfg: SpuriousSweepConfig, stats: dict) -> None:
    """Grouped bars per N: average (solid) and worst-group (hatched) test accuracy of every model, ± std."""
    bars = [(m, kind) for m in cfg.models for kind in METRICS]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(cfg.samples) * len(cfg.models)), 4), dpi=120)
    for b, (m, kind) in enumerate(bars):
        x = [i + (b - (len(bars) - 1) / 2) * width for i in range(len(cfg.samples))]
        mean, std = zip(*(stats[m, N][kind] for N in cfg.samples))
        ax.bar(x, mean, width, yerr=std, capsize=3, color=f"C{cfg.models.index(m)}", edgecolor="black",
               hatch="" if kind == METRICS[0] else "//", alpha=1.0 if kind == METRICS[0] else 0.5,
               label=f"{m}: {'average' if kind == METRICS[0] else 'worst-group'}")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(cfg.samples)), [f"N={N}" for N in cfg.samples])
    ax.set(ylabel="test accuracy", ylim=(0, 1), title=f"{cfg.data}: mean ± std over {cfg.seeds} seeds"
                                                      + (f", {cfg.epochs} epochs" if cfg.epochs else ""))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def report(cfg: SpuriousSweepConfig, results: list[dict], stats: dict, groups: dict) -> str:
    """Markdown: accuracies per N and model, the best worst-group accuracy per N, mean accuracy of every group."""
    fmt = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
    params = {r["model"]: r["params"] for r in results}
    average, worst = METRICS
    text = markdown_table(["N", "model", "parameters", "average accuracy", "worst-group accuracy"],
                          [[N, m, params[m], fmt(stats[m, N][average]), fmt(stats[m, N][worst])]
                           for N in cfg.samples for m in cfg.models])
    for N in cfg.samples:
        ranked = sorted(cfg.models, key=lambda m: -stats[m, N][worst][0])
        text += f"\nN={N}, worst-group accuracy, highest first: " + ", ".join(
            f"{m} {fmt(stats[m, N][worst])}" for m in ranked) + "."
    names = sorted(groups[cfg.models[0], cfg.samples[0]], key=int)
    rows = [[N, m] + [f"{groups[m, N][g]:.3f}" for g in names] for N in cfg.samples for m in cfg.models]
    return text + ("\n\nTest accuracy per group (label y, nuisance z, group 2y + z; in training z = y in "
                   f"{cfg.train_ratio():.0%} of each class), mean over seeds:\n\n"
                   + markdown_table(["N", "model"] + [f"y={int(g) // 2}, z={int(g) % 2}" for g in names], rows))


def strength_plots(out: Path, cfg: SpuriousSweepConfig, stats: dict[float, dict]) -> None:
    """average_vs_strength.png, worst_group_vs_strength.png: one line per model and N, ± std over seeds."""
    for metric, name, label in zip(METRICS, ("average", "worst_group"), ("average", "worst-group")):
        series = {f"{m}, N={N}": (cfg.strengths, [stats[r][m, N][metric][0] for r in cfg.strengths],
                                  [stats[r][m, N][metric][1] for r in cfg.strengths])
                  for m in cfg.models for N in cfg.samples}
        line_plot(out / f"{name}_vs_strength.png", series, "train_ratio (share of each class with nuisance = label)",
                  f"{label} test accuracy", f"{cfg.data}: mean ± std over {cfg.seeds} seeds", hline=0.5)


def run_experiment(cfg: SpuriousSweepConfig, out_dir: str | Path, workers: int | None = 1,
                   progress: bool = True) -> dict:
    """Train every strength, model, N and seed into out_dir/runs (`workers` at a time); write results.json,
    results.md and the plots there: accuracy.png (one strength) or, per strength, accuracy-train_ratio=R.png and the
    accuracies against the strength."""
    out, start = Path(out_dir), time.perf_counter()
    check(cfg.data in DATASETS, f"spurious data must be one of {DATASETS}, got {cfg.data!r}")
    sweeps = cfg.sweeps()
    runs = run_sweeps(sweeps, out, workers, progress)
    stats, summary, results, sections = {}, [], [], []
    for key, sweep in sweeps.items():
        ratio, rs = sweep.train_ratio(), [{**r, "train_ratio": sweep.train_ratio()} for r in runs[key]]
        stats[ratio], groups = summarize(rs, METRICS), group_means(rs)
        png = "accuracy.png" if cfg.strengths is None else f"accuracy-train_ratio={ratio:g}.png"
        bar_plot(out / png, sweep, stats[ratio])
        heading = "" if cfg.strengths is None else f"## train_ratio = {ratio:g}\n\n"
        sections.append(f"{heading}![accuracy]({png})\n\n{report(sweep, rs, stats[ratio], groups)}")
        summary += [{"train_ratio": ratio, "model": m, "samples": N, "average": stats[ratio][m, N][METRICS[0]],
                     "worst_group": stats[ratio][m, N][METRICS[1]], "group_accuracy": groups[m, N]}
                    for N in cfg.samples for m in cfg.models]
        results += rs
    if cfg.strengths is not None:
        strength_plots(out, cfg, stats)
        sections.insert(0, "![average vs strength](average_vs_strength.png) "
                           "![worst-group vs strength](worst_group_vs_strength.png)")
    text = "\n\n".join(sections)
    seconds = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", {"config": asdict(cfg), "seconds": seconds, "summary": summary, "runs": results})
    write_text(out / "results.md", f"# Spurious correlations ({cfg.data})\n\n{text}\n\n"
                                   f"Config: `{json.dumps(asdict(cfg))}`\n\nWall time: {seconds} s.\n")
    return {"data": cfg.data, "seconds": seconds, "runs": len(results), "report": text, "out": str(out)}
