"""Sample complexity of pMoE against the CNN (the paper's headline claim, Chowdhury et al. 2023, Fig. 4/Table 1).

Two modes:
* `accuracy` -- test accuracy against the number of training samples N for cnn, pmoe, pmoe-separate
  (the paper's MNIST figure; Fashion-MNIST patch canvases by default).
* `n-over-l` -- on the theory's synthetic data, the fewest samples each model needs to reach a target test
  accuracy as the number of patches n grows with l fixed (the theory: CNN ~ n^8, pMoE ~ l^8), and the exponent of n
  fitted to them: least squares of log N-needed on log n, N-needed interpolated in log N where the seeds' median
  accuracy crosses the target, with a 95% percentile interval from a bootstrap over seeds (`pmoe.analysis.rates`).
  `--fine`: a finer n and N grid for that fit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pmoe.analysis.rates import Curves, fit_rate
from pmoe.errors import check
from pmoe.experiments.flags import add_out, add_theory_args, add_workers, theory_changes
from pmoe.experiments.runner import Job, run_jobs
from pmoe.io import write_json, write_text
from pmoe.models import THEORY_MODELS, TheoryConfig
from pmoe.options import parse_spec
from pmoe.reports import line_plot, markdown_table, mean_std
from pmoe.runs.theory import DataSpec
from pmoe.train import TrainConfig

NAME = "sample-complexity"
HELP = "pMoE vs CNN: test accuracy against N, or samples needed vs n/l"
COUNT = "runs"
MODES = ("accuracy", "n-over-l")


@dataclass
class SampleComplexityConfig:
    mode: str = "accuracy"  # accuracy | n-over-l
    data: str = "fashion-patches"  # accuracy mode's data set
    samples: list[int] = field(default_factory=lambda: [100, 300, 500, 700, 900, 1000])  # N grid
    seeds: int = 5
    epochs: int = 150
    router_epochs: int = 100
    models: list[str] = field(default_factory=lambda: list(THEORY_MODELS))
    test_samples: int = 2000
    data_options: dict = field(default_factory=dict)
    # n-over-l mode: patches per sample swept, l of both pMoE models, accuracy to reach
    n_values: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    l: int = 2
    target: float = 0.9


PAPER = SampleComplexityConfig()
QUICK = SampleComplexityConfig(samples=[100, 300, 1000], seeds=2, epochs=30, router_epochs=20, test_samples=1000)
N_OVER_L = SampleComplexityConfig(mode="n-over-l", data="synthetic", samples=[50, 100, 200, 400, 800, 1600],
                                  seeds=3, epochs=60, router_epochs=30, test_samples=1000)
N_OVER_L_QUICK = SampleComplexityConfig(mode="n-over-l", data="synthetic", samples=[50, 100, 200, 400, 800],
                                        seeds=2, epochs=30, router_epochs=20, test_samples=500,
                                        n_values=[4, 8, 16])
# For the fitted exponents: N from below pMoE's need to above the CNN's at n = 16, in steps of x1.5 and x1.33.
FINE = replace(N_OVER_L, n_values=[4, 6, 8, 12, 16, 24, 32], seeds=5,
               samples=[16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072])
FINE_QUICK = replace(N_OVER_L_QUICK, n_values=[4, 6, 8, 12, 16], seeds=3, samples=[16, 32, 64, 128, 256, 512, 1024])
# Table 1's sample complexity in n (l, k fixed): the theory's exponents are upper bounds (sufficient samples).
THEORY = {"cnn": "n^8 (Ω(n⁸/ε¹⁶))", "pmoe": "n^0 (Ω(k⁴l⁶/ε¹⁶))", "pmoe-separate": "n^0 (Ω(l⁸/ε¹⁶))"}


def preset(mode: str, quick: bool, fine: bool = False) -> SampleComplexityConfig:
    check(mode in MODES, f"mode must be 'accuracy' or 'n-over-l', got {mode!r}")
    check(not fine or mode == "n-over-l", "--fine is a grid of the n-over-l mode: add --mode n-over-l")
    if mode == "accuracy":
        return SampleComplexityConfig(**asdict(QUICK if quick else PAPER))
    return SampleComplexityConfig(**asdict({(False, False): N_OVER_L, (True, False): N_OVER_L_QUICK,
                                            (False, True): FINE, (True, True): FINE_QUICK}[quick, fine]))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p)
    p.add_argument("--mode", choices=MODES, default="accuracy")
    p.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores instead of the paper's sweep")
    p.add_argument("--fine", action="store_true", help="n-over-l: the finer grid for the fitted exponents, n 4..32 "
                   "and N 16..3072, 5 seeds (with --quick: n 4..16, N 16..1024, 3 seeds)")
    add_theory_args(p, data="accuracy mode's data set", samples={"nargs": "+", "help": "the N grid"},
                    seeds="seeds per point", epochs="training epochs per run",
                    models=f"models to compare: {', '.join(THEORY_MODELS)}, each optionally with config overrides, "
                           "e.g. cnn:neurons=40 pmoe:l=2")
    add_workers(p)


def config(args: argparse.Namespace) -> SampleComplexityConfig:
    cfg = preset(args.mode, args.quick, args.fine)
    return replace(cfg, **theory_changes(args, cfg.data_options))


def parse_model(spec: str) -> tuple[str, dict]:
    """'cnn:neurons=40,l=2' -> ('cnn', {'neurons': 40, 'l': 2}); a model name with optional config overrides."""
    return parse_spec(spec, THEORY_MODELS, TheoryConfig.__dataclass_fields__)


def _jobs(cfg: SampleComplexityConfig) -> list[Job]:
    check(cfg.seeds >= 1 and cfg.samples and cfg.models, "need at least one seed, one sample size and one model")
    n_values = cfg.n_values if cfg.mode == "n-over-l" else [None]
    jobs = []
    for n in n_values:
        opts = dict(cfg.data_options, **({"n": n} if n is not None else {}))
        for spec in cfg.models:
            model, model_opts = parse_model(spec)
            if n is not None and model != "cnn":
                model_opts.setdefault("l", cfg.l)
            for N in cfg.samples:
                for seed in range(cfg.seeds):
                    data = DataSpec(cfg.data, N, cfg.test_samples, 0, opts)
                    train = TrainConfig(epochs=cfg.epochs, router_epochs=cfg.router_epochs, seed=seed,
                                        log_routing=False)
                    jobs.append(Job(model, data, train, model_opts, tags={"spec": spec, **({"n": n} if n else {})}))
    return jobs


def aggregate(results: list[dict], keys: tuple[str, ...]) -> dict[tuple, dict]:
    """Group results by `keys` -> {'acc': (mean, std), 'routing': mean best-expert hit rate, 'routing_initial': the
    same at the runs' initial weights, 'runs': count}."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    out = {}
    for key, rs in sorted(groups.items()):
        routed = [r["routing"] for r in rs if "routing" in r]
        out[key] = {"acc": mean_std([r["test_accuracy"] for r in rs]), "runs": len(rs),
                    "routing": mean([h["best_expert"] for h in routed]),
                    "routing_initial": mean([h["initial"]["best_expert"] for h in routed if "initial" in h])}
    return out


def _accuracy_report(cfg: SampleComplexityConfig, results: list[dict], out: Path) -> str:
    agg = aggregate(results, ("spec", "samples"))
    series = {m: ([N for N in cfg.samples], [agg[(m, N)]["acc"][0] for N in cfg.samples],
                  [agg[(m, N)]["acc"][1] for N in cfg.samples]) for m in cfg.models}
    line_plot(out / "accuracy_vs_samples.png", series, "training samples N", "test accuracy",
              f"{cfg.data}: mean ± std over {cfg.seeds} seeds, {cfg.epochs} epochs")
    rows = [[N] + [f"{agg[(m, N)]['acc'][0]:.3f} ± {agg[(m, N)]['acc'][1]:.3f}" for m in cfg.models]
            for N in cfg.samples]
    text = markdown_table(["N"] + cfg.models, rows)
    if "cnn" in cfg.models:
        top = agg[("cnn", max(cfg.samples))]["acc"][0]
        for m in (m for m in cfg.models if m != "cnn"):
            match = next((N for N in cfg.samples if agg[(m, N)]["acc"][0] >= top), None)
            text += f"\n{m} reaches the CNN's accuracy at N={max(cfg.samples)} ({top:.3f}) with " + \
                    (f"N={match} samples." if match else "none of the sample sizes tried.")
    moe = [m for m in cfg.models if agg[(m, cfg.samples[0])]["routing"] is not None]
    if moe:
        text += "\n\n" + _routing_table(cfg.samples, moe, agg, results)
    return text


def _routing_table(samples: list[int], models: list[str], agg: dict[tuple, dict], results: list[dict]) -> str:
    """Markdown: the best expert's hit rate of the class patch per N, trained and at the initial weights."""
    routing = {m: next(r["routing"] for r in results if r["spec"] == m) for m in models}
    header = [f"{m}: trained / at init (chance: {routing[m]['chance_best_expert']:.3f} best of "
              f"{len(routing[m]['per_expert'])}, {routing[m]['chance']:.3f} one)" for m in models]
    rows = [[N] + [f"{agg[(m, N)]['routing']:.3f} / {agg[(m, N)]['routing_initial']:.3f}" for m in models]
            for N in samples]
    return ("How often the best expert of each class takes its discriminative patch (test set, mean over seeds), "
            "after training and at the same runs' initial weights. Chance: the expected value of that max over k "
            "experts if each took l random patches of n, and l/n for one expert:\n\n"
            + markdown_table(["N"] + header, rows))


def curves(results: list[dict], spec: str) -> Curves:
    """n -> N -> the seeds' test accuracies of model `spec`."""
    out: Curves = {}
    for r in results:
        if r["spec"] == spec:
            out.setdefault(r["n"], {}).setdefault(r["samples"], []).append(r["test_accuracy"])
    return out


def rates(cfg: SampleComplexityConfig, results: list[dict]) -> dict[str, dict]:
    """Model spec -> `fit_rate` of its samples needed against n, with Table 1's rate in n ('theory')."""
    return {m: {**fit_rate(curves(results, m), cfg.target), "theory": THEORY[parse_model(m)[0]]} for m in cfg.models}


def _needed_cell(curve: dict[int, list[float]], needed: float | None, target: float) -> str:
    """N needed as the report shows it: interpolated, or where the median curve lies outside the N grid."""
    if needed is not None:
        return f"{needed:.0f}"
    first, last = min(curve), max(curve)
    if statistics.median(curve[first]) >= target:
        return f"≤ {first}"
    return f"> {last} ({statistics.median(curve[last]):.2f} at {last})"


def _n_over_l_report(cfg: SampleComplexityConfig, results: list[dict], out: Path, fits: dict[str, dict]) -> str:
    """Per model and n the samples needed (the fit's points: the seeds' median crossing the target, interpolated in
    log N), their plot, the fitted exponents, and every run's accuracy."""
    ratio = {n: n / cfg.l for n in cfg.n_values}
    points = {m: {n: fits[m]["points"][n] for n in cfg.n_values} for m in cfg.models}
    series = {m: ([ratio[n] for n, v in p.items() if v], [v for v in p.values() if v], [0.0 for v in p.values() if v])
              for m, p in points.items()}
    line_plot(out / "samples_needed_vs_n_over_l.png", series, "n / l", f"samples to reach {cfg.target:.0%}",
              f"synthetic data, l={cfg.l}, median over {cfg.seeds} seeds", logx=True)
    runs = {m: curves(results, m) for m in cfg.models}
    text = (f"Samples needed: the N at which the median test accuracy over the seeds reaches {cfg.target:.0%}, "
            "interpolated in log N between the grid points around the crossing (≤ / >: outside the grid):\n\n"
            + markdown_table(["n", "n/l"] + [f"{m}: N to {cfg.target:.0%}" for m in cfg.models],
                             [[n, f"{ratio[n]:g}"] + [_needed_cell(runs[m][n], points[m][n], cfg.target)
                                                      for m in cfg.models] for n in cfg.n_values]))
    exp = lambda f: (f"{f['exponent']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]" if f["ci"] else  # noqa: E731
                     f"{f['exponent']:.2f}" if f["exponent"] is not None else "– (< 2 points in the grid)")
    fit = ("Fitted exponent b of N-needed ~ n^b (least squares of log N on log n over the n whose need lies inside "
           "the N grid), 95% percentile interval from a bootstrap over seeds (draws kept: those in which every fitted "
           "n stays inside the grid); Table 1's rates are upper bounds on the samples needed, so a smaller fitted "
           "exponent does not contradict them:\n\n"
           + markdown_table(["model", "exponent b [95% CI]", "draws", "Table 1"],
                            [[m, exp(f), f["resamples"], f["theory"]] for m, f in fits.items()]))
    agg = aggregate(results, ("n", "spec", "samples"))
    rows = [[n, m, N, f"{a['acc'][0]:.3f} ± {a['acc'][1]:.3f}"] for (n, m, N), a in agg.items()]
    return text + "\n\n" + fit + "\n\nAll runs (mean ± std over seeds):\n\n" + markdown_table(
        ["n", "model", "N", "test accuracy"], rows)


def run_experiment(cfg: SampleComplexityConfig, out_dir: str | Path, workers: int | None = None,
                   progress: bool = True) -> dict:
    """Run the sweep, write results.json, a PNG plot and results.md into out_dir; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run_jobs(_jobs(cfg), workers, progress)
    fits = rates(cfg, results) if cfg.mode == "n-over-l" else {}
    report = _n_over_l_report(cfg, results, out, fits) if fits else _accuracy_report(cfg, results, out)
    seconds = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", {"config": asdict(cfg), "seconds": seconds, "runs": results,
                                      **({"rates": fits} if fits else {})})
    write_text(out / "results.md", f"# Sample complexity ({cfg.mode})\n\n{report}\n\nConfig: `{json.dumps(asdict(cfg))}`"
                                   f"\n\nWall time: {seconds} s.\n")
    return {"mode": cfg.mode, "seconds": seconds, "runs": len(results), "report": report, "out": str(out)}
