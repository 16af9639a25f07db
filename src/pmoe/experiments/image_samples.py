"""WRN-pMoE against WRN as the training set grows (pMoE paper, CIFAR-10 and CelebA figures): test accuracy against
the number of training images N and against the training FLOPs, mean ± std over seeds; and the fewest N with which
each pMoE model reaches the dense model's accuracy at the largest N.

Data: `fashion-patches-image` (default: the paper's MNIST canvases as 112x112 images of 4x4 Fashion-MNIST patches,
one class patch, trouser vs ankle boot, 15 label-irrelevant patches), with `wrn-tiny` against `wrn-pmoe-tiny` built
for 112x112 with regions of 7x7 on the 28x28 map, i.e. one region per canvas patch (n=16, l=2); or `fashion-mnist`
with the paper's CIFAR pair (`wrn-cifar`, `wrn-pmoe-cifar`), or any image data set and presets. Training: each
preset's recipe (`pmoe.train.recipes`; WRN: SGD 0.1, momentum 0.9, weight decay 5e-4, cosine, batch 128) with the
sweep's epochs and augmentation (the Fashion-MNIST sweeps crop and flip, as their published figures did); every run
takes at least `min_steps` optimizer steps (small N train more epochs). `--paper-recipe`: the paper's CIFAR-10
setting, exactly 50 epochs without augmentation (no step minimum), 5 seeds, N in {2000, 4000, 8000, 16000}, on
Fashion-MNIST unless --data says otherwise. Runs are saved in OUT/runs/MODEL/N<N>-seed<S> and resumed or read back on
a re-run; with several visible GPUs the workers spread over them.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from pmoe.errors import check
from pmoe.experiments.image_sweep import (AUTHORS_LAYOUT, ImageSweepConfig, add_sweep_args, group_runs, run_sweep,
                                         summarize, sweep_config)
from pmoe.io import write_json, write_text
from pmoe.reports import line_plot, markdown_table, mean_std

NAME = "image-samples"
HELP = "WRN vs WRN-pMoE: test accuracy against training images and FLOPs"
COUNT = "runs"

# 8 filters per expert: wrn-pmoe-tiny's width when REPRODUCTION §4 (a) was measured (the preset has 16 since).
CANVAS = ImageSweepConfig(data="fashion-patches-image", data_options={"num_samples": 5000},
                          models=["wrn-tiny", f"wrn-pmoe-tiny:region=7,l=2,expert_channels=8,{AUTHORS_LAYOUT}"],
                          samples=[250, 500, 1000, 5000],
                          test_samples=2000, seeds=3, epochs=20, min_steps=400, augment=False)
FASHION = ImageSweepConfig(data="fashion-mnist", models=["wrn-cifar", "wrn-pmoe-cifar"],
                           samples=[1000, 4000, 16000], seeds=2, epochs=15, min_steps=600, augment=True)
# The paper's recipe (its CIFAR-10 runs: 50 epochs, no augmentation, 5 runs) with the preset's optimizer (wrn-sgd);
# evaluated every 10 epochs: a per-epoch evaluation of the 10k test images would cost 45% of the training.
PAPER = replace(FASHION, samples=[2000, 4000, 8000, 16000], seeds=5, epochs=50, min_steps=0, evals=5, augment=False)
QUICK = ImageSweepConfig(data="fashion-mnist", models=["wrn-tiny", "wrn-pmoe-tiny"], model_options={"input_size": 28},
                         samples=[500, 2000], test_samples=1000, seeds=2, epochs=5, min_steps=100, batch_size=64,
                         augment=True)
PRESETS = {"fashion-patches-image": CANVAS, "fashion-mnist": FASHION}


def preset(data: str | None, quick: bool, paper: bool = False) -> ImageSweepConfig:
    """The quick CPU sweep, the paper's recipe, the named data set's sweep, or the canvas sweep's settings on another
    data set."""
    check(not (quick and paper), "--quick and --paper-recipe exclude each other: pick one")
    base = QUICK if quick else PAPER if paper else PRESETS.get(data, CANVAS)
    return replace(base, **({"data": data} if data else {}))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sweep_args(p, "image data set (default: fashion-patches-image, or fashion-mnist with --paper-recipe; "
                      "fashion-mnist: the CIFAR presets)")
    p.add_argument("--paper-recipe", action="store_true", help="the paper's WRN recipe: wrn-cifar vs wrn-pmoe-cifar, "
                   "50 epochs, no augmentation, 5 seeds, N 2000 4000 8000 16000, evaluated every 10 epochs")


def config(args: argparse.Namespace) -> ImageSweepConfig:
    return sweep_config(preset(args.data, args.quick, args.paper_recipe), args)


def match_line(cfg: ImageSweepConfig, stats: dict[tuple[str, int], dict], model: str) -> str:
    """The fewest N at which `model`'s mean accuracy reaches the dense model's (the first of cfg.models) at the largest
    N, with both means ± std and the ratio of their training FLOPs."""
    acc = {key: s["test_accuracy"] for key, s in stats.items()}
    base, top = cfg.models[0], max(cfg.samples)
    fmt = lambda key: f"{acc[key][0]:.3f} ± {acc[key][1]:.3f}"  # noqa: E731
    match = next((N for N in sorted(cfg.samples) if acc[model, N][0] >= acc[base, top][0]), None)
    head = f"{model} against {base}'s mean accuracy at N={top} ({fmt((base, top))}): "
    if match is None:
        best = max(cfg.samples, key=lambda N: acc[model, N][0])
        return head + f"not reached at any N tried (its best: {fmt((model, best))} at N={best})."
    ratio = stats[model, match]["train_flops"] / stats[base, top]["train_flops"]
    return head + f"reached first at N={match} ({fmt((model, match))}), with {ratio:.2f}x its training FLOPs."


def report(cfg: ImageSweepConfig, results: list[dict], out: Path) -> str:
    """Markdown table and two PNG plots (accuracy against N, against training FLOPs) in `out`."""
    stats = summarize(results)
    acc = {key: s["test_accuracy"] for key, s in stats.items()}
    title = f"{cfg.data}: mean ± std over {cfg.seeds} seeds"
    for name, x, label, logx in (("samples", lambda m, N: N, "training images N", True),
                                 ("flops", lambda m, N: stats[m, N]["train_flops"], "training FLOPs", True)):
        series = {m: ([x(m, N) for N in cfg.samples], [acc[m, N][0] for N in cfg.samples],
                      [acc[m, N][1] for N in cfg.samples]) for m in cfg.models}
        line_plot(out / f"accuracy_vs_{name}.png", series, label, "test accuracy", title, logx=logx)
    epochs = {N: max(r["epochs"] for r in results if r["samples"] == N) for N in cfg.samples}
    rows = [[N, epochs[N]] + [f"{acc[m, N][0]:.3f} ± {acc[m, N][1]:.3f} ({stats[m, N]['train_flops'] / 1e12:.2f})"
                              for m in cfg.models] for N in cfg.samples]
    text = markdown_table(["N", "epochs"] + [f"{m} (training TFLOPs)" for m in cfg.models], rows)
    text += "".join("\n" + match_line(cfg, stats, m) for m in cfg.models[1:])
    routed = [m for m in cfg.models if all("class_patch" in r for r in results if r["model"] == m)]
    if routed:  # canvases: how often the first MoE layer's best expert per class covers the class patch
        runs = group_runs(results)

        def hit(m: str, N: int, key: str) -> tuple[float, float]:
            return mean_std([r["class_patch"][key] for r in runs[m, N]])

        chance = {m: mean_std([r["class_patch"]["chance"] for r in results if r["model"] == m])[0] for m in routed}
        text += ("\n\nHow often the best expert of each class (first MoE layer) covers the class patch of a test "
                 "canvas, trained → at the run's initial weights, mean ± std over seeds (chance in the header):\n\n"
                 + markdown_table(["N"] + [f"{m} (chance {chance[m]:.3f})" for m in routed],
                                  [[N] + [" → ".join(f"{a:.3f} ± {b:.3f}" for a, b in (hit(m, N, "best_expert"),
                                                                                      hit(m, N, "initial")))
                                          for m in routed] for N in cfg.samples]))
    flops = {r["model"]: r["flops_per_image"] for r in results}
    params = {r["model"]: r["params"] for r in results}
    return text + "\n\n" + markdown_table(["model", "parameters", "forward MFLOPs / image"],
                                          [[m, params[m], f"{flops[m] / 1e6:.1f}"] for m in cfg.models])


def run_experiment(cfg: ImageSweepConfig, out_dir: str | Path, workers: int | None = 1,
                   progress: bool = True) -> dict:
    """Train every model, N and seed into out_dir/runs (`workers` at a time); write results.json,
    accuracy_vs_samples.png, accuracy_vs_flops.png and results.md there."""
    out, start = Path(out_dir), time.perf_counter()
    results = run_sweep(cfg, out, workers, progress)
    text = report(cfg, results, out)
    seconds = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", {"config": asdict(cfg), "seconds": seconds, "runs": results})
    write_text(out / "results.md", f"# Accuracy against training-set size ({cfg.data})\n\n"
                                   "![accuracy vs N](accuracy_vs_samples.png) ![accuracy vs FLOPs]"
                                   f"(accuracy_vs_flops.png)\n\n{text}\nConfig: `{json.dumps(asdict(cfg))}`\n\n"
                                   f"Wall time: {seconds} s.\n")
    return {"data": cfg.data, "seconds": seconds, "runs": len(results), "report": text, "out": str(out)}
