"""Spurious correlations (pMoE paper, CelebA "spurious smiling"): a dense WRN against WRN-pMoE, trained where a
nuisance attribute agrees with the binary label in 95% of each class and tested where it is independent of it (50/50):
average and worst-group test accuracy (groups: label x nuisance), mean ± std over seeds, for each training-set size N.

Data: `fashion-spurious` (Fashion-MNIST {T-shirt, Pullover} vs {Coat, Shirt}; nuisance: a white 4x4 stamp in the
top-left corner), or `celeba-spurious` (the paper's: Smiling vs not, nuisance blond vs black hair; CelebA on disk).
N training images: a class-balanced random subset of the 95/5 train split, fixed across training seeds (so each
class holds about 5% nuisance-disagreeing images). Training: the paper's recipe, SGD lr 0.1 (momentum 0.9, weight
decay 5e-4, cosine schedule: `FitConfig` defaults), batch 128, 50 epochs, no augmentation (a crop would move the
stamp). Every run is saved in OUT/runs/MODEL/N<N>-seed<S> (`pmoe eval`, `pmoe route --png`); an interrupted
experiment re-run with the same flags resumes its runs.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pmoe.errors import check
from pmoe.io import atomic_path, write_json, write_text
from pmoe.models.presets import PRESETS
from pmoe.options import parse_spec
from pmoe.reports import markdown_table, mean_std, plt
from pmoe.train import FitConfig, OptimConfig
from pmoe.train.image_runs import ImageDataSpec, train_preset
from pmoe.train.state import STATE

DATASETS = ("fashion-spurious", "celeba-spurious")


@dataclass
class SpuriousExperimentConfig:
    data: str = "fashion-spurious"  # fashion-spurious | celeba-spurious
    models: list[str] = field(default_factory=lambda: ["wrn-tiny", "wrn-pmoe-tiny"])  # presets, "name:key=value,.."
    model_options: dict = field(default_factory=lambda: {"input_size": 28})  # preset fields for every model
    samples: list[int] = field(default_factory=lambda: [1000, 2000, 4000, 8000, 12000])  # N grid
    test_samples: int | None = None  # a class-balanced subset of the test split; None: all of it
    seeds: int = 5
    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.1
    device: str = "auto"
    data_dir: str | None = None  # None: the data set's default folder

    def fit_config(self, seed: int) -> FitConfig:
        return FitConfig(epochs=self.epochs, batch_size=self.batch_size, optim=OptimConfig(lr=self.lr),
                         augment=False, seed=seed, device=self.device)


# Fashion: the tiny pair, both zero-padding 28x28 into 32x32 (the pMoE's 4x4 regions of 8x8 px: the stamp is in one).
FASHION = SpuriousExperimentConfig()
FASHION_QUICK = SpuriousExperimentConfig(samples=[800], test_samples=500, seeds=2, epochs=4, batch_size=64)
# CelebA 64x64: the paper's WRN-10-10 pair (pMoE: 8 experts, n=16 regions of 4x4 of the 16x16 map, l=2).
CELEBA = SpuriousExperimentConfig(data="celeba-spurious", models=["wrn-celeba", "wrn-pmoe-celeba"], model_options={},
                                  samples=[2000, 4000, 8000, 16000])
CELEBA_QUICK = SpuriousExperimentConfig(data="celeba-spurious", model_options={}, samples=[800], test_samples=500,
                                        seeds=2, epochs=4, batch_size=64)


def preset(data: str, quick: bool) -> SpuriousExperimentConfig:
    check(data in DATASETS, f"spurious data must be one of {DATASETS}, got {data!r}")
    base = {(False, False): FASHION, (False, True): FASHION_QUICK, (True, False): CELEBA, (True, True): CELEBA_QUICK}
    return SpuriousExperimentConfig(**asdict(base[data == "celeba-spurious", quick]))


def parse_model(spec: str) -> tuple[str, dict]:
    """'wrn-pmoe-tiny:l=2,gate=hard' -> ('wrn-pmoe-tiny', {'l': 2, 'gate': 'hard'}): a preset and its overrides."""
    return parse_spec(spec, sorted(PRESETS), kind="preset")


def run_one(cfg: SpuriousExperimentConfig, spec: str, samples: int, seed: int, out: Path) -> dict:
    """Train (or resume, or read back) one run into `out`; its accuracies, parameters and seconds."""
    name, overrides = parse_model(spec)
    data = ImageDataSpec(cfg.data, cfg.data_dir, samples, cfg.test_samples)
    r = train_preset(name, data, cfg.fit_config(seed), out, {**cfg.model_options, **overrides},
                     resume=(out / STATE).exists(), progress=False)
    keys = ("test_accuracy", "worst_group_accuracy", "group_accuracy", "train_accuracy", "params", "seconds")
    return {"model": spec, "samples": samples, "seed": seed, **{k: r[k] for k in keys}, "dir": str(out)}


def summarize(results: list[dict]) -> dict[tuple[str, int], dict]:
    """(model, N) -> {'average' | 'worst': (mean, std) over seeds of test and worst-group test accuracy,
    'groups': {group: mean test accuracy}}."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        runs.setdefault((r["model"], r["samples"]), []).append(r)
    return {key: {"average": mean_std([r["test_accuracy"] for r in rs]),
                  "worst": mean_std([r["worst_group_accuracy"] for r in rs]),
                  "groups": {g: mean_std([r["group_accuracy"][g] for r in rs])[0] for g in rs[0]["group_accuracy"]}}
            for key, rs in runs.items()}


def bar_plot(path: Path, cfg: SpuriousExperimentConfig, stats: dict) -> None:
    """Grouped bars per N: average (solid) and worst-group (hatched) test accuracy of every model, ± std."""
    bars = [(m, kind) for m in cfg.models for kind in ("average", "worst")]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(cfg.samples) * len(cfg.models)), 4), dpi=120)
    for b, (m, kind) in enumerate(bars):
        x = [i + (b - (len(bars) - 1) / 2) * width for i in range(len(cfg.samples))]
        mean, std = zip(*(stats[m, N][kind] for N in cfg.samples))
        ax.bar(x, mean, width, yerr=std, capsize=3, color=f"C{cfg.models.index(m)}", edgecolor="black",
               hatch="" if kind == "average" else "//", alpha=1.0 if kind == "average" else 0.5,
               label=f"{m}: {'average' if kind == 'average' else 'worst-group'}")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(cfg.samples)), [f"N={N}" for N in cfg.samples])
    ax.set(ylabel="test accuracy", ylim=(0, 1), title=f"{cfg.data}: mean ± std over {cfg.seeds} seeds, "
                                                      f"{cfg.epochs} epochs")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def report(cfg: SpuriousExperimentConfig, results: list[dict], stats: dict) -> str:
    """Markdown: accuracies per N and model, the best worst-group accuracy per N, mean accuracy of every group."""
    fmt = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
    params = {r["model"]: r["params"] for r in results}
    text = markdown_table(["N", "model", "parameters", "average accuracy", "worst-group accuracy"],
                          [[N, m, params[m], fmt(stats[m, N]["average"]), fmt(stats[m, N]["worst"])]
                           for N in cfg.samples for m in cfg.models])
    for N in cfg.samples:
        ranked = sorted(cfg.models, key=lambda m: -stats[m, N]["worst"][0])
        text += f"\nN={N}, worst-group accuracy, highest first: " + ", ".join(
            f"{m} {fmt(stats[m, N]['worst'])}" for m in ranked) + "."
    groups = sorted(stats[cfg.models[0], cfg.samples[0]]["groups"], key=int)
    rows = [[N, m] + [f"{stats[m, N]['groups'][g]:.3f}" for g in groups] for N in cfg.samples for m in cfg.models]
    return text + ("\n\nTest accuracy per group (label y, nuisance z, group 2y + z; in training z = y in 95% of "
                   "each class), mean over seeds:\n\n"
                   + markdown_table(["N", "model"] + [f"y={int(g) // 2}, z={int(g) % 2}" for g in groups], rows))


def run_experiment(cfg: SpuriousExperimentConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train every model, N and seed into out_dir/runs; write results.json, accuracy.png and results.md there."""
    check(cfg.seeds >= 1 and len(cfg.samples) > 0 and len(cfg.models) > 0,
          "need at least one seed, one sample size and one model")
    for spec in cfg.models:
        parse_model(spec)  # refuse a bad spec before training anything
    out, start = Path(out_dir), time.perf_counter()
    jobs = [(N, m, seed) for N in cfg.samples for m in cfg.models for seed in range(cfg.seeds)]
    results = []
    for i, (N, m, seed) in enumerate(jobs, 1):
        results.append(run_one(cfg, m, N, seed, out / "runs" / re.sub(r"[^\w.=-]+", "_", m) / f"N{N}-seed{seed}"))
        if progress:
            r = results[-1]
            print(f"[{i}/{len(jobs)}] {m} N={N} seed {seed}: accuracy {r['test_accuracy']:.3f}, worst-group "
                  f"{r['worst_group_accuracy']:.3f} ({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    stats = summarize(results)
    bar_plot(out / "accuracy.png", cfg, stats)
    text = report(cfg, results, stats)
    seconds = round(time.perf_counter() - start, 1)
    summary = [{"model": m, "samples": N, "average": stats[m, N]["average"], "worst_group": stats[m, N]["worst"],
                "group_accuracy": stats[m, N]["groups"]} for N in cfg.samples for m in cfg.models]
    write_json(out / "results.json", {"config": asdict(cfg), "seconds": seconds, "summary": summary, "runs": results})
    write_text(out / "results.md", f"# Spurious correlations ({cfg.data})\n\n![accuracy](accuracy.png)\n\n{text}\n\n"
                                   f"Config: `{json.dumps(asdict(cfg))}`\n\nWall time: {seconds} s.\n")
    return {"data": cfg.data, "seconds": seconds, "runs": len(results), "report": text, "out": str(out)}
