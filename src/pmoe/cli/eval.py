"""`pmoe eval DIR`: evaluate a saved checkpoint on the data it was made with (rebuilt from its config.json).

Theory checkpoints: train and test accuracy; pMoE models also how often the routers pick the class patch, trained and
at the run's initial weights (rebuilt from its config and seed). Vision checkpoints: accuracy and loss on one split
(default test), and per-group and worst-group accuracy on data sets with groups (the spurious-correlation sets)."""
from __future__ import annotations

import argparse
import sys

from pmoe.checkpoints import nonfinite_weights
from pmoe.cli.common import emit
from pmoe.data.vision import SPLITS
from pmoe.experiments.flags import device_name
from pmoe.runs.kinds import kind_of_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder written by `pmoe train` or `pmoe finetune`")
    p.add_argument("--split", choices=SPLITS, help="vision checkpoints: the split to evaluate (default: test)")
    p.add_argument("--device", type=device_name, help="vision checkpoints: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kind = kind_of_checkpoint(args.checkpoint)  # a clear error for a folder that is no checkpoint
    bad, total = nonfinite_weights(args.checkpoint)
    if bad:
        print(f"pmoe eval: warning: {bad:,} of {total:,} weights of {args.checkpoint} are NaN or infinite (the run "
              "diverged); its results mean nothing", file=sys.stderr)
    r = kind.evaluate(args.checkpoint, args.split, args.device)
    emit(r, args.json, kind.eval_lines(r))
    return 0
