"""`pmoe eval DIR`: evaluate a saved checkpoint on the data it was trained and tested on."""
from __future__ import annotations

import argparse

from pmoe.cli.common import emit
from pmoe.runs import evaluate_checkpoint, summarize


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder written by `pmoe train`")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, cfg, train_ds, test_ds = evaluate_checkpoint(args.checkpoint)
    result = {"checkpoint": args.checkpoint, "model": cfg["model"]["model"],
              "epochs": cfg.get("train", {}).get("epochs"), **summarize(model, train_ds, test_ds)}
    result.pop("routing", None)
    emit(result, args.json, [f"{result['model']}: train accuracy {result['train_accuracy']:.4f}   "
                             f"test accuracy {result['test_accuracy']:.4f}   parameters {result['params']}"])
    return 0
