"""Helpers shared by the sub-commands: JSON output and data/model/training flags."""
from __future__ import annotations

import argparse
import json
from typing import Any

from pmoe.data import DATASETS, DEFAULT_DATA_DIR
from pmoe.data.vision import DATASETS_ROOT, IMAGE_DATASETS
from pmoe.errors import check
from pmoe.routing import GATE_MODES
from pmoe.runs import DataSpec
from pmoe.train import FitConfig, TrainConfig
from pmoe.train.optim import DEFAULTS as OPTIM_DEFAULTS


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """Print a result: human lines, or (with --json) one JSON object as the last line of stdout."""
    print(json.dumps(result) if as_json else "\n".join(lines), flush=True)


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--out (the checkpoint folder), --json and --quiet: the tail of every training command."""
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (theory models: synthetic or fashion-patches; vision presets: an image data set)")
    g.add_argument("--data", choices=DATASETS + tuple(IMAGE_DATASETS),
                   help="data set (default: synthetic for theory models, fashion-mnist for vision presets)")
    g.add_argument("--samples", type=positive_int,
                   help="training samples N (theory default: 1000; vision: a balanced subset of the train split, "
                        "default all)")
    g.add_argument("--test-samples", type=positive_int,
                   help="test samples (theory default: 2000; vision: a balanced subset of the test split, default all)")
    g.add_argument("--data-seed", type=int, default=0, help="which samples are drawn (default: 0)")
    g.add_argument("--data-dir", default=None, help=f"data folder (default: {DEFAULT_DATA_DIR} for the Fashion-MNIST "
                                                    f"sets, {DATASETS_ROOT}/NAME for other image data sets)")
    g.add_argument("--n", type=positive_int, help="synthetic: patches per sample (default 16)")
    g.add_argument("--d", type=positive_int, help="synthetic: patch dimension (default 64)")
    g.add_argument("--noise", type=float, help="synthetic: noise std per coordinate (default 0.1)")
    g.add_argument("--similarity", type=float, help="synthetic: cosine of irrelevant to class patterns (default 0.5)")
    g.add_argument("--num-irrelevant", type=positive_int, help="synthetic: label-irrelevant patterns (default 8)")


def data_spec(args: argparse.Namespace) -> DataSpec:
    d = DataSpec()
    name = args.data or d.name
    keys = ["n", "d", "noise", "similarity", "num_irrelevant"] if name == "synthetic" else []
    opts = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.data_dir is not None:
        opts["data_dir"] = args.data_dir
    return DataSpec(name, pick(args.samples, d.samples), pick(args.test_samples, d.test_samples), args.data_seed,
                    opts)


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
    g = p.add_argument_group("training (theory models: the paper's recipe by default)")
    g.add_argument("--epochs", type=int, help=f"default: {d.epochs} for theory models, {FitConfig().epochs} for vision")
    vision = ", ".join(f"{v['lr']} {k}" for k, v in OPTIM_DEFAULTS.items())
    g.add_argument("--lr", type=float, help=f"learning rate (default: {d.lr} plain SGD for theory models; vision: "
                                            f"{vision})")
    g.add_argument("--batch-size", type=positive_int,
                   help=f"default: {d.batch_size} for theory models, {FitConfig().batch_size} for vision")
    g.add_argument("--router-epochs", type=int,
                   help=f"pmoe-separate: epochs of router training first (default: {d.router_epochs})")
    g.add_argument("--seed", type=int, default=0, help="initialisation and batch order (default: 0)")


def train_config(args: argparse.Namespace) -> TrainConfig:
    d = TrainConfig()
    return TrainConfig(epochs=pick(args.epochs, d.epochs), batch_size=pick(args.batch_size, d.batch_size),
                       lr=pick(args.lr, d.lr), seed=args.seed, router_epochs=pick(args.router_epochs, d.router_epochs))


def pick(value: Any, default: Any) -> Any:
    """`value`, or `default` where the flag was not given (None)."""
    return default if value is None else value


def refuse_flags(args: argparse.Namespace, names: tuple[str, ...], why: str) -> None:
    """A PmoeError naming the flags among `names` (dests) that were given, if any."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) not in (None, False, [])]
    check(not given, f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {why}")
