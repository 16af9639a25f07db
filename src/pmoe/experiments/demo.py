"""The end-to-end demo on the embedded default data: one report folder with markdown, PNG plots and JSON.

Part 1, sample complexity (pMoE ICML 2023): the quick sweep on Fashion-MNIST patch canvases (CNN vs joint and
separate pMoE) and on the theory's synthetic data (with a CNN of 8x the width of the paper's).
Part 2, expert pruning (ICML 2024): pretrain a pMoE on four pattern pairs, fine-tune it on one, and prune it at
every ratio by router-norm change, random, router norm and saliency (`pmoe experiment prune-theory --quick`).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from pmoe.experiments import pruning_theory
from pmoe.experiments.sample_complexity import preset, run_experiment
from pmoe.io import write_json, write_text

SYNTHETIC_MODELS = ["cnn", "cnn:neurons=40", "pmoe", "pmoe:l=2", "pmoe-separate"]


def run_demo(out_dir: str | Path, workers: int | None = None, progress: bool = True) -> dict:
    """Run every part of the demo into `out_dir`; returns {'seconds', 'parts': {name: summary}}."""
    out = Path(out_dir)
    start = time.perf_counter()
    quick = preset("accuracy", quick=True)
    parts = {
        "fashion-patches": run_experiment(quick, out / "sample-complexity-fashion", workers, progress),
        "synthetic": run_experiment(replace(quick, data="synthetic", models=SYNTHETIC_MODELS, samples=[50, 100, 200],
                                            epochs=60, router_epochs=30),
                                    out / "sample-complexity-synthetic", workers, progress),
    }
    pruning = pruning_theory.run_experiment(pruning_theory.QUICK, out / "pruning-theory", workers, progress)
    seconds = round(time.perf_counter() - start, 1)
    lines = ["# pmoe demo", "", f"Total wall time: {seconds} s.", ""]
    for name, summary in parts.items():
        folder = Path(summary["out"]).name
        lines += [f"## Sample complexity on {name}", "", f"![accuracy vs N]({folder}/accuracy_vs_samples.png)", "",
                  summary["report"], "", f"Details: [{folder}/results.md]({folder}/results.md)", ""]
    lines += ["## Expert pruning by router-norm change on the theory's synthetic data", "",
              "![accuracy vs pruning ratio](pruning-theory/accuracy_vs_ratio.png) "
              "![Δ per expert](pruning-theory/delta_vs_routing.png)", "", pruning["report"], "",
              "Details: [pruning-theory/results.md](pruning-theory/results.md)", ""]
    write_text(out / "README.md", "\n".join(lines))
    summary = {"seconds": seconds, "parts": {k: {"seconds": v["seconds"], "runs": v["runs"],
                                                 "out": Path(v["out"]).name} for k, v in parts.items()}}
    summary["parts"]["pruning-theory"] = {"seconds": pruning["seconds"], "seeds": pruning["seeds"],
                                          "out": Path(pruning["out"]).name}
    write_json(out / "summary.json", summary)
    return summary
