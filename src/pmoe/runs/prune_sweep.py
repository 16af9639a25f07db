"""`prune_sweep`: test accuracy of several criteria over several pruning ratios, before and after a post-pruning
fine-tune, with parameter, FLOP and latency savings; writes results.json, PNG plots and results.md (`pmoe prune-sweep`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from pmoe.errors import check
from pmoe.io import write_json, write_text
from pmoe.outputs import output_folder
from pmoe.prune.cost import model_cost
from pmoe.runs.prune import Pair, PruneConfig, accuracy, load_pair, pruned_copy, scores_for
from pmoe.prune.scores import choose_kept
from pmoe.prune.surgery import check_pruning
from pmoe.runs.tasks import FinetuneConfig
from pmoe.reports import line_plot, markdown_table


@dataclass
class SweepConfig:
    methods: list[str] = field(default_factory=lambda: ["router-norm-change", "random", "router-norm"])
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])  # fractions pruned per layer
    mode: str = "zero"
    seed: int = 0
    calib_samples: int = 256
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    batch_size: int = 64  # of the FLOP and latency measurements

    def prune_config(self, method: str, ratio: float) -> PruneConfig:
        return PruneConfig(method, ratio=ratio, mode=self.mode, seed=self.seed, calib_samples=self.calib_samples,
                           finetune=self.finetune)


def _point(pair: Pair, scores: list[Tensor], cfg: PruneConfig, with_cost: bool, x: Tensor) -> dict:
    """Accuracy of one (method, ratio) after pruning and, with fine-tune steps, after the fine-tune."""
    model, kept = pruned_copy(pair, scores, cfg)
    rec = {"method": cfg.method, "ratio": cfg.ratio, "kept": kept, "accuracy": accuracy(pair.task, model)}
    if with_cost:
        rec["cost"] = model_cost(model, x)
    if cfg.finetune.steps:
        pair.task.finetune(model, cfg.finetune)
        rec["accuracy_finetuned"] = accuracy(pair.task, model)
    return rec


def _saving(before: float, after: float, fmt: str = "{:,.0f}") -> str:
    """'after (change %)'."""
    return f"{fmt.format(after)} ({after / before - 1:+.0%})"


def _report(cfg: SweepConfig, base: dict, points: list[dict], out: Path) -> str:
    acc = {(p["method"], p["ratio"]): p for p in points}
    keys = ["accuracy"] + (["accuracy_finetuned"] if cfg.finetune.steps else [])
    for key in keys:
        series = {m: ([0.0, *cfg.ratios], [base["accuracy"]] + [acc[(m, r)][key] for r in cfg.ratios],
                      [0.0] * (len(cfg.ratios) + 1)) for m in cfg.methods}
        title = "after pruning" if key == "accuracy" else f"after pruning and {cfg.finetune.steps} fine-tune steps"
        line_plot(out / f"{key}_vs_ratio.png", series, "experts pruned per layer", "test accuracy",
                  f"{title} ({cfg.mode} mode)", hline=base["accuracy"])
    cost = {r: next(p["cost"] for p in points if p["ratio"] == r and "cost" in p) for r in cfg.ratios}
    c0 = base["cost"]
    rows = [["0 (fine-tuned)", f"{c0['params']:,}", f"{c0['flops']:,}", f"{c0['latency_ms']:.2f}"]
            + [f"{base['accuracy']:.3f}"] * len(cfg.methods)]
    for r in cfg.ratios:
        c = cost[r]
        rows.append([f"{r:g}", _saving(c0["params"], c["params"]), _saving(c0["flops"], c["flops"]),
                     _saving(c0["latency_ms"], c["latency_ms"], "{:.2f}")]
                    + [" → ".join(f"{acc[(m, r)][k]:.3f}" for k in keys) for m in cfg.methods])
    note = f" (after pruning → after {cfg.finetune.steps} fine-tune steps)" if cfg.finetune.steps else ""
    return markdown_table(["pruned", "parameters", "FLOPs / sample", f"latency ms / {cfg.batch_size}"]
                          + [f"{m}{note}" for m in cfg.methods], rows)


def prune_sweep(finetuned_dir: str | Path, pretrained_dir: str | Path | None, cfg: SweepConfig, out_dir: str | Path,
                overwrite: bool = False, device: str = "auto", progress: bool = False) -> dict:
    """Evaluate cfg.methods × cfg.ratios on a fine-tuned checkpoint; write the report into `out_dir`; `progress`:
    a bar over the (method, ratio) points on stderr."""
    with output_folder(out_dir, [finetuned_dir, pretrained_dir], overwrite) as tmp:
        summary = _sweep(finetuned_dir, pretrained_dir, cfg, tmp, device, progress)
    return {"out": str(out_dir), **summary}


def _sweep(finetuned_dir: str | Path, pretrained_dir: str | Path | None, cfg: SweepConfig, tmp: Path, device: str,
           progress: bool) -> dict:
    """`prune_sweep`'s work, writing the report into `tmp`; the summary."""
    start = time.perf_counter()
    check(len(cfg.methods) > 0 and len(cfg.ratios) > 0, "give at least one method and one ratio")
    twice = [v for vs in (cfg.methods, cfg.ratios) for i, v in enumerate(vs) if v in vs[:i]]
    check(not twice, f"methods and ratios must differ from each other; given twice: {twice}")
    configs = {(m, r): cfg.prune_config(m, r) for m in cfg.methods for r in cfg.ratios}  # checks every setting
    pair = load_pair(finetuned_dir, pretrained_dir, device)
    layers = pair.finetuned.moe_layers()
    for r in cfg.ratios:  # fail now, not after hours: every ratio must be possible
        check_pruning(pair.finetuned, choose_kept([layer.router.weight[:, 0] for layer in layers], layers, ratio=r),
                      cfg.mode)
    x = pair.task.example(cfg.batch_size)
    base = {"accuracy": accuracy(pair.task, pair.finetuned), "cost": model_cost(pair.finetuned, x)}
    points = []
    bar = tqdm(total=len(configs), desc="prune-sweep", unit="point", disable=not progress)
    for m in cfg.methods:
        scores = scores_for(pair, m, configs[(m, cfg.ratios[0])])
        for r in cfg.ratios:
            points.append(_point(pair, scores, configs[(m, r)], m == cfg.methods[0], x))
            bar.update()
    bar.close()
    seconds = round(time.perf_counter() - start, 1)
    table = _report(cfg, base, points, tmp)
    write_json(tmp / "results.json", {"finetuned": str(finetuned_dir), "pretrained": str(pretrained_dir),
                                      "config": dataclasses.asdict(cfg), "unpruned": base, "points": points,
                                      "sources": pair.sources, "seconds": seconds})
    write_text(tmp / "results.md", f"# Expert pruning sweep\n\n`{finetuned_dir}` (pretrained: `{pretrained_dir}`),"
                                   f" mode {cfg.mode}.\n\n{table}\nConfig: `{json.dumps(dataclasses.asdict(cfg))}`"
                                   f"\n\nWall time: {seconds} s.\n")
    return {"seconds": seconds, "unpruned": base, "points": points, "report": table}
