"""`pmoe experiment NAME`: reproduce a claim of the papers; writes results.json, PNG plots and results.md."""
from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from functools import partial

from pmoe.cli.common import add_report_args, emit, positive_int, report_output
from pmoe.cli.vision_args import add_recipe_args, recipe_changes
from pmoe.experiments import image_samples, pruning_theory, routing_dynamics, sample_complexity, spurious
from pmoe.experiments.sample_complexity import preset, run_experiment
from pmoe.models import THEORY_MODELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a paper experiment", description=__doc__)
    exp = p.add_subparsers(dest="experiment", required=True, metavar="NAME")
    s = exp.add_parser("sample-complexity", help="pMoE vs CNN: test accuracy against N, or samples needed vs n/l",
                       description=sample_complexity.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--out", required=True, help="report folder")
    s.add_argument("--mode", choices=("accuracy", "n-over-l"), default="accuracy")
    s.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores instead of the paper's sweep")
    s.add_argument("--data", choices=("fashion-patches", "synthetic"), help="accuracy mode's data set")
    s.add_argument("--data-dir", help="IDX folder (e.g. MNIST) instead of Debian's Fashion-MNIST")
    s.add_argument("--samples", type=positive_int, nargs="+", help="the N grid")
    s.add_argument("--seeds", type=positive_int, help="seeds per point")
    s.add_argument("--epochs", type=positive_int, help="training epochs per run")
    s.add_argument("--models", nargs="+", metavar="MODEL",
                   help=f"models to compare: {', '.join(THEORY_MODELS)}, each optionally with config overrides, "
                        "e.g. cnn:neurons=40 pmoe:l=2")
    s.add_argument("--workers", type=positive_int, help="parallel runs (default: CPU cores)")
    add_report_args(s)
    s.set_defaults(func=run_sample_complexity)
    t = exp.add_parser("prune-theory", help="expert pruning by router-norm change on the theory's synthetic data",
                       description=pruning_theory.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--out", required=True, help="report folder")
    t.add_argument("--quick", action="store_true", help="4 seeds, no post-pruning fine-tune (under a minute)")
    t.add_argument("--seeds", type=positive_int, help="seeds (default: 10, quick: 4)")
    t.add_argument("--workers", type=positive_int, help="parallel seeds (default: CPU cores)")
    add_report_args(t)
    t.set_defaults(func=run_prune_theory)
    add_image_sweeps(exp)
    r = exp.add_parser("routing", help="discriminative routing over training: routers' hit rate of the class patch",
                       description=routing_dynamics.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--out", required=True, help="report folder")
    r.add_argument("--quick", action="store_true", help="N=300, 2 seeds, 30 epochs (about a minute on 2 cores)")
    r.add_argument("--data", choices=("fashion-patches", "synthetic"), help="default: fashion-patches")
    r.add_argument("--data-dir", help="IDX folder (e.g. MNIST) instead of Debian's Fashion-MNIST")
    r.add_argument("--samples", type=positive_int, help="training samples N")
    r.add_argument("--seeds", type=positive_int, help="seeds per model")
    r.add_argument("--epochs", type=positive_int, help="training epochs")
    r.add_argument("--models", nargs="+", metavar="MODEL", help="pmoe, pmoe-separate, with overrides (pmoe:l=2)")
    r.add_argument("--workers", type=positive_int, help="parallel runs (default: CPU cores)")
    add_report_args(r)
    r.set_defaults(func=run_routing)


def add_image_sweeps(exp: argparse._SubParsersAction) -> None:
    """`image-samples` and `spurious`: sweeps of vision runs, one set of flags."""
    for name, module, help_, data_help in (
            ("image-samples", image_samples, "WRN vs WRN-pMoE: test accuracy against training images and FLOPs",
             "image data set (default: fashion-patches-image; fashion-mnist: the CIFAR presets)"),
            ("spurious", spurious, "dense WRN vs WRN-pMoE under a spurious correlation: worst-group accuracy",
             f"one of {', '.join(spurious.DATASETS)} (default: {spurious.DATASETS[0]})")):
        s = exp.add_parser(name, help=help_, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("--out", required=True, help="report folder (runs in OUT/runs)")
        s.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores instead of the GPU sweep")
        s.add_argument("--data", help=data_help)
        s.add_argument("--data-dir", help="data folder (default: the data set's)")
        s.add_argument("--models", nargs="+", metavar="PRESET", help="presets to compare, the dense one first, each "
                       "optionally with overrides, e.g. wrn-tiny wrn-pmoe-tiny:l=2")
        s.add_argument("--samples", type=positive_int, nargs="+", help="the N grid (training images)")
        s.add_argument("--test-samples", type=positive_int, help="a class-balanced subset of the test split")
        s.add_argument("--seeds", type=positive_int, help="seeds per point")
        s.add_argument("--min-steps", type=int, help="optimizer steps per run at least: small N train more epochs "
                       "(default: the preset's; 0: none)")
        g = s.add_argument_group("training: every model's recipe (pmoe.train.recipes) with the experiment's settings; "
                                 "each flag changes one field")
        g.add_argument("--epochs", type=positive_int, help="training epochs per run (at least)")
        g.add_argument("--batch-size", type=positive_int)
        g.add_argument("--lr", type=float, help="peak learning rate")
        add_recipe_args(g)
        s.add_argument("--device", help="auto (default: cuda if available), cpu, cuda, cuda:N")
        s.add_argument("--workers", type=positive_int, default=1,
                       help="runs trained at once, in worker processes (they share the GPU); default 1")
        add_report_args(s)
        s.set_defaults(func=partial(run_image_sweep, module))


def run_image_sweep(module, args: argparse.Namespace) -> int:
    cfg = module.preset(args.data, args.quick)
    for name in ("data_dir", "models", "samples", "test_samples", "seeds", "min_steps", "device"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    for name, value in recipe_changes(args).items():
        setattr(cfg, name, value)
    with report_output(args, asdict(cfg)) as folder:
        summary = {**module.run_experiment(cfg, folder, args.workers, progress=not args.quiet), "out": args.out}
    emit(summary, args.json, [summary["report"], f"{summary['runs']} runs in {summary['seconds']} s; "
                                                 f"report in {args.out}"])
    return 0


def _run(cfg, run_experiment_fn, args: argparse.Namespace) -> int:
    """Apply the common flags to an experiment config, run it, print its report."""
    for name in ("data", "samples", "seeds", "epochs", "models"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.data_dir:
        cfg.data_options["data_dir"] = args.data_dir
    with report_output(args, asdict(cfg)) as folder:
        summary = {**run_experiment_fn(cfg, folder, args.workers, progress=not args.quiet), "out": args.out}
    emit(summary, args.json, [summary["report"], f"{summary['runs']} runs in {summary['seconds']} s; "
                                                 f"report in {args.out}"])
    return 0


def run_sample_complexity(args: argparse.Namespace) -> int:
    return _run(preset(args.mode, args.quick), run_experiment, args)


def run_prune_theory(args: argparse.Namespace) -> int:
    cfg = replace(pruning_theory.QUICK if args.quick else pruning_theory.FULL)
    cfg.seeds = args.seeds or cfg.seeds
    with report_output(args, asdict(cfg)) as folder:
        summary = {**pruning_theory.run_experiment(cfg, folder, args.workers, progress=not args.quiet),
                   "out": args.out}
    emit(summary, args.json, [summary["report"], f"{summary['seeds']} seeds in {summary['seconds']} s; "
                                                 f"report in {args.out}"])
    return 0


def run_routing(args: argparse.Namespace) -> int:
    return _run(routing_dynamics.preset(args.quick), routing_dynamics.run_experiment, args)
