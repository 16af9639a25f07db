"""`pmoe eval DIR`: evaluate a saved checkpoint on the data it was made with (rebuilt from its config.json).

Theory checkpoints: train and test accuracy; pMoE models also how often the routers pick the class patch, trained and
at the run's initial weights (rebuilt from its config and seed). Vision checkpoints: accuracy and loss on one split
(default test), and per-group and worst-group accuracy on data sets with groups (the spurious-correlation sets)."""
from __future__ import annotations

import argparse
import sys

from pmoe.checkpoints import nonfinite_weights, read_config
from pmoe.cli.common import emit, refuse_flags, routing_line
from pmoe.data.vision import SPLITS
from pmoe.runs.theory import evaluate_checkpoint, initial_theory_model, summarize
from pmoe.runs.images import evaluate_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder written by `pmoe train` or `pmoe finetune`")
    p.add_argument("--split", choices=SPLITS, help="vision checkpoints: the split to evaluate (default: test)")
    p.add_argument("--device", help="vision checkpoints: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    arch = read_config(args.checkpoint)["arch"]  # a clear error for a folder that is no checkpoint
    bad, total = nonfinite_weights(args.checkpoint)
    if bad:
        print(f"pmoe eval: warning: {bad:,} of {total:,} weights of {args.checkpoint} are NaN or infinite (the run "
              "diverged); its results mean nothing", file=sys.stderr)
    if arch != "theory":
        r = evaluate_run(args.checkpoint, args.split or "test", args.device or "auto")
        s = r["split"]
        groups = (f"   worst-group accuracy {r['worst_group_accuracy']:.4f}" if "worst_group_accuracy" in r else "")
        emit(r, args.json, [f"{r['model']} on {r['data']} {s} ({r['samples']} images): accuracy "
                            f"{r[f'{s}_accuracy']:.4f}   loss {r[f'{s}_loss']:.4f}{groups}   parameters {r['params']}"])
        return 0
    refuse_flags(args, ("split", "device"), "to vision checkpoints only")
    model, cfg, train_ds, test_ds = evaluate_checkpoint(args.checkpoint)
    result = {"checkpoint": args.checkpoint, "model": cfg["model"]["model"],
              "epochs": cfg.get("train", {}).get("epochs"),
              **summarize(model, train_ds, test_ds, initial_theory_model(cfg))}
    emit(result, args.json, [f"{result['model']}: train accuracy {result['train_accuracy']:.4f}   "
                             f"test accuracy {result['test_accuracy']:.4f}   parameters {result['params']}"]
                            + ([routing_line(result["routing"])] if "routing" in result else []))
    return 0
