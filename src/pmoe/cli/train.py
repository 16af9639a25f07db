"""`pmoe train`: train a theory model (cnn | pmoe | pmoe-separate) and save a checkpoint."""
from __future__ import annotations

import argparse

from pmoe.cli.common import (add_data_args, add_model_args, add_train_args, data_spec, emit, model_options,
                             train_config)
from pmoe.models import THEORY_MODELS
from pmoe.runs import run as run_training


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model and save a checkpoint", description=__doc__)
    p.add_argument("--model", choices=THEORY_MODELS, default="pmoe", help="default: pmoe (joint training)")
    add_data_args(p)
    add_model_args(p)
    add_train_args(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = run_training(args.model, data_spec(args), train_config(args), model_options(args), args.out,
                          progress=not (args.quiet or args.json))
    lines = [f"{args.model} on {args.data}, N={args.samples}, {args.epochs} epochs, {result['seconds']:.1f} s",
             f"train accuracy {result['train_accuracy']:.4f}   test accuracy {result['test_accuracy']:.4f}",
             f"trainable parameters {result['params']}   checkpoint: {args.out}"]
    emit(result, args.json, lines)
    return 0
