"""`pmoe prune-sweep FINETUNED_DIR --pretrained PRETRAINED_DIR --methods ... --ratios ... --out DIR`: test accuracy
of every method at every pruning ratio, before and after a post-pruning fine-tune; writes results.json,
accuracy_vs_ratio.png (one line per method) and results.md (with parameter, FLOP and measured latency savings).
`pmoe prune-combine SWEEP_DIR SWEEP_DIR ... --out DIR`: mean ± std of such sweeps (e.g. one per seed)."""
from __future__ import annotations

import argparse

from pmoe.cli.common import emit
from pmoe.cli.prune import add_prune_args, finetune_config
from pmoe.runs.prune_combine import combine_sweeps
from pmoe.prune.registry import METHODS
from pmoe.runs.prune_sweep import SweepConfig, prune_sweep


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune-sweep", help="compare pruning criteria over pruning ratios", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prune_args(p)
    d = SweepConfig()
    p.add_argument("--methods", nargs="+", choices=METHODS, default=d.methods, metavar="METHOD",
                   help=f"criteria to compare, of {', '.join(METHODS)} (default: {' '.join(d.methods)})")
    p.add_argument("--ratios", nargs="+", type=float, default=d.ratios, metavar="R",
                   help=f"fractions of experts pruned per layer (default: {' '.join(map(str, d.ratios))})")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)
    c = sub.add_parser("prune-combine", help="mean ± std over seeds of several prune-sweep reports",
                       description=combine_sweeps.__doc__)
    c.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR", help="prune-sweep report folders of the same settings")
    c.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    c.add_argument("--json", action="store_true", help="print the result as one JSON object")
    c.set_defaults(func=run_combine)


def run(args: argparse.Namespace) -> int:
    cfg = SweepConfig(args.methods, args.ratios, args.mode, args.seed, args.calib_samples, finetune_config(args))
    summary = prune_sweep(args.finetuned, args.pretrained, cfg, args.out, args.overwrite, args.device,
                          progress=not args.quiet)
    emit(summary, args.json, [summary["report"], f"{summary['seconds']} s; report in {args.out}"])
    return 0


def run_combine(args: argparse.Namespace) -> int:
    summary = combine_sweeps(args.sweeps, args.out, args.overwrite)
    emit(summary, args.json, [summary["report"], f"{summary['sweeps']} sweeps; report in {args.out}"])
    return 0
