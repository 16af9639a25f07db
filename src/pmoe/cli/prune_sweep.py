"""`pmoe prune-sweep FINETUNED_DIR --pretrained PRETRAINED_DIR --methods ... --ratios ... --out DIR`: test accuracy
of every method at every pruning ratio, before and after a post-pruning fine-tune; writes results.json,
accuracy_vs_ratio.png (one line per method) and results.md (with parameter, FLOP and measured latency savings)."""
from __future__ import annotations

import argparse

from pmoe.cli.common import emit
from pmoe.cli.prune import add_prune_args, finetune_config
from pmoe.prune.scores import METHODS
from pmoe.prune.sweep import SweepConfig, prune_sweep


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune-sweep", help="compare pruning criteria over pruning ratios", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prune_args(p)
    d = SweepConfig()
    p.add_argument("--methods", nargs="+", choices=METHODS, default=d.methods, metavar="METHOD",
                   help=f"criteria to compare, of {', '.join(METHODS)} (default: {' '.join(d.methods)})")
    p.add_argument("--ratios", nargs="+", type=float, default=d.ratios, metavar="R",
                   help=f"fractions of experts pruned per layer (default: {' '.join(map(str, d.ratios))})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = SweepConfig(args.methods, args.ratios, args.mode, args.seed, args.calib_samples, finetune_config(args))
    summary = prune_sweep(args.finetuned, args.pretrained, cfg, args.out, args.overwrite, args.device)
    emit(summary, args.json, [summary["report"], f"{summary['seconds']} s; report in {args.out}"])
    return 0
