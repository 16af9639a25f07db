"""Helpers shared by the sub-commands: JSON output and data/model/training flags."""
from __future__ import annotations

import argparse
import json
from typing import Any

from pmoe.data import DATASETS, DEFAULT_DATA_DIR
from pmoe.routing import GATE_MODES
from pmoe.runs import DataSpec
from pmoe.train import TrainConfig


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """Print a result: human lines, or (with --json) one JSON object as the last line of stdout."""
    print(json.dumps(result) if as_json else "\n".join(lines), flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, default="synthetic", help="data set (default: synthetic)")
    g.add_argument("--samples", type=positive_int, default=1000, help="training samples N (default: 1000)")
    g.add_argument("--test-samples", type=positive_int, default=2000, help="test samples (default: 2000)")
    g.add_argument("--data-seed", type=int, default=0, help="which samples are drawn (default: 0)")
    g.add_argument("--data-dir", default=None, help=f"IDX folder for fashion-patches (default: {DEFAULT_DATA_DIR})")
    g.add_argument("--n", type=positive_int, help="synthetic: patches per sample (default 16)")
    g.add_argument("--d", type=positive_int, help="synthetic: patch dimension (default 64)")
    g.add_argument("--noise", type=float, help="synthetic: noise std per coordinate (default 0.1)")
    g.add_argument("--similarity", type=float, help="synthetic: cosine of irrelevant to class patterns (default 0.5)")
    g.add_argument("--num-irrelevant", type=positive_int, help="synthetic: label-irrelevant patterns (default 8)")


def data_spec(args: argparse.Namespace) -> DataSpec:
    keys = ["n", "d", "noise", "similarity", "num_irrelevant"] if args.data == "synthetic" else []
    opts = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.data_dir is not None:
        opts["data_dir"] = args.data_dir
    return DataSpec(args.data, args.samples, args.test_samples, args.data_seed, opts)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (paper defaults per model when omitted)")
    g.add_argument("--experts", type=positive_int, help="k, number of experts")
    g.add_argument("--neurons", type=positive_int, help="m, ReLU neurons (filters) per expert")
    g.add_argument("-l", "--l", dest="l", type=int, help="patches per expert per sample")
    g.add_argument("--gate", choices=GATE_MODES, help="gate mode")
    g.add_argument("--pool", choices=("l", "n"), help="divide expert sums by l (paper) or n (official code)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("experts", "neurons", "l", "gate", "pool") if getattr(args, k) is not None}


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = p.add_argument_group("training (paper recipe by default)")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"default: {d.epochs}")
    g.add_argument("--lr", type=float, default=d.lr, help=f"SGD learning rate (default: {d.lr})")
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"default: {d.batch_size}")
    g.add_argument("--router-epochs", type=int, default=d.router_epochs,
                   help=f"pmoe-separate: epochs of router training first (default: {d.router_epochs})")
    g.add_argument("--seed", type=int, default=0, help="initialisation and batch order (default: 0)")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       router_epochs=args.router_epochs)
