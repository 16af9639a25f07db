"""`pmoe eval DIR`: evaluate a saved checkpoint on the data it was made with (rebuilt from its config.json).

Theory checkpoints: train and test accuracy; pMoE models also how often the routers pick the class patch, trained and
at the run's initial weights (rebuilt from its config and seed). Vision checkpoints: accuracy and loss on one split
(default test), and per-group and worst-group accuracy on data sets with groups (the spurious-correlation sets)."""
from __future__ import annotations

import argparse
import sys

from pmoe.checkpoints import nonfinite_weights
from pmoe.cli.common import emit, routing_line
from pmoe.data.vision import SPLITS
from pmoe.runs.kinds import kind_of_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder written by `pmoe train` or `pmoe finetune`")
    p.add_argument("--split", choices=SPLITS, help="vision checkpoints: the split to evaluate (default: test)")
    p.add_argument("--device", help="vision checkpoints: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kind = kind_of_checkpoint(args.checkpoint)  # a clear error for a folder that is no checkpoint
    bad, total = nonfinite_weights(args.checkpoint)
    if bad:
        print(f"pmoe eval: warning: {bad:,} of {total:,} weights of {args.checkpoint} are NaN or infinite (the run "
              "diverged); its results mean nothing", file=sys.stderr)
    r = kind.evaluate(args.checkpoint, args.split, args.device)
    emit(r, args.json, _split_lines(r) if "split" in r else _train_test_lines(r))
    return 0


def _split_lines(r: dict) -> list[str]:
    """One split of a vision checkpoint, with group accuracies where the data set has groups."""
    s = r["split"]
    groups = f"   worst-group accuracy {r['worst_group_accuracy']:.4f}" if "worst_group_accuracy" in r else ""
    return [f"{r['model']} on {r['data']} {s} ({r['samples']} images): accuracy {r[f'{s}_accuracy']:.4f}   "
            f"loss {r[f'{s}_loss']:.4f}{groups}   parameters {r['params']}"]


def _train_test_lines(r: dict) -> list[str]:
    """Both splits of a theory checkpoint, with the routers' class-patch hits of a pMoE model."""
    return ([f"{r['model']}: train accuracy {r['train_accuracy']:.4f}   test accuracy {r['test_accuracy']:.4f}   "
             f"parameters {r['params']}"] + ([routing_line(r["routing"])] if "routing" in r else []))
