"""Helpers shared by the sub-commands: JSON output and data/model/training flags."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, ContextManager

from pmoe.data import DATASETS, DEFAULT_DATA_DIR, FILE_PREFIX
from pmoe.data.vision import DATASETS_ROOT, IMAGE_DATASETS
from pmoe.errors import check
from pmoe.experiments.flags import nonnegative_int, positive_int, seed
from pmoe.io import finite_json
from pmoe.outputs import output_folder
from pmoe.layers.routing import GATE_MODES
from pmoe.runs.theory import DataSpec
from pmoe.train import FitConfig, TrainConfig
from pmoe.train.state import differences


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """Print a result: human lines, or (with --json) one JSON object as the last line of stdout, always valid JSON:
    NaN and infinite numbers as null, with "non_finite": true."""
    if as_json:
        result, bad = finite_json(result)
        print(json.dumps({**result, "non_finite": True} if bad else result, allow_nan=False), flush=True)
    else:
        print("\n".join(lines), flush=True)


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--out (the checkpoint folder), --overwrite, --json and --quiet: the tail of every training command."""
    p.add_argument("--out", required=True, help="checkpoint folder to write (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a folder holding other files (once the new checkpoint is complete)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def input_paths(args: argparse.Namespace) -> list[str | None]:
    """The files and folders a command reads, of the flags it has: checkpoints, data folders and files."""
    data = getattr(args, "data", None) or ""
    return [getattr(args, "pretrained", None), getattr(args, "data_dir", None), getattr(args, "test_data", None),
            data[len(FILE_PREFIX):] if data.startswith(FILE_PREFIX) else None]


def output(args: argparse.Namespace, resumable: bool = False, same_run: bool = False,
           differs: str = "") -> ContextManager[Path]:
    """`pmoe.outputs.output_folder` for --out and the command's inputs; `resumable`: a run that writes its folder
    as it goes (--resume continues it in place)."""
    resume = getattr(args, "resume", False)
    check(not (resume and args.overwrite), "--resume continues the run in --out and --overwrite replaces it; give one")
    return output_folder(args.out, input_paths(args), args.overwrite, same_run or resume, staged=not resumable,
                         differs=differs)


def report_output(args: argparse.Namespace, config: dict | None) -> ContextManager[Path]:
    """`output` for an experiment's report folder: re-running it in place is the same run when the folder holds a
    report of the same `config` (results.json; None: the demo's summary.json) or the runs/ of an image sweep (each
    run's settings are checked when it resumes or is read back)."""
    out = Path(args.out)
    if config is None:
        return output(args, resumable=True, same_run=(out / "summary.json").is_file())
    try:
        saved = json.loads((out / "results.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        saved = None
    new = json.loads(json.dumps(config))
    differs = "; ".join(differences({"config": saved}, {"config": new})) if isinstance(saved, dict) else ""
    return output(args, resumable=True, same_run=(out / "runs").is_dir() or saved == new, differs=differs)


SYNTHETIC_FLAGS = ("n", "d", "noise", "similarity", "num_irrelevant")  # dests of the synthetic data's flags
CANVAS_FLAGS = ("classes", "grid")  # and of the patch canvases' (fashion-patches)


def data_name(text: str) -> str:
    """--data: a data set's name, or file:PATH (a user's .npz of theory data)."""
    names = DATASETS + tuple(IMAGE_DATASETS)
    if text in names or (text.startswith(FILE_PREFIX) and len(text) > len(FILE_PREFIX)):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(names)}, or file:PATH.npz)")


def file_path(text: str) -> str:
    """--test-data file:PATH -> PATH."""
    if not text.startswith(FILE_PREFIX) or len(text) == len(FILE_PREFIX):
        raise argparse.ArgumentTypeError(f"expected file:PATH.npz, got {text!r}")
    return text[len(FILE_PREFIX):]


def is_theory_data(name: str) -> bool:
    """Whether --data `name` is data of the theory models: a theory data set or file:PATH."""
    return name in DATASETS or name.startswith(FILE_PREFIX)


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (theory models: synthetic, fashion-patches or file:PATH.npz; vision presets: an "
                             "image data set)")
    g.add_argument("--data", type=data_name, metavar="NAME",
                   help=f"theory models: {', '.join(DATASETS)}, or file:PATH.npz, your own samples (format in the "
                        f"README); vision presets: {', '.join(IMAGE_DATASETS)} (default: synthetic for theory "
                        f"models, fashion-mnist for vision presets)")
    g.add_argument("--test-data", type=file_path, metavar="file:PATH",
                   help="with --data file:PATH: a second .npz holding the test samples (default: the _test arrays "
                        "of the --data file)")
    g.add_argument("--samples", type=positive_int,
                   help="training samples N (theory default: 1000, file: all; vision: a balanced subset of the train "
                        "split, default all); of a file: a seeded subset, balanced between +1 and -1 where it can be")
    g.add_argument("--test-samples", type=positive_int,
                   help="test samples (theory default: 2000, file: all; vision: a balanced subset of the test split, "
                        "default all)")
    g.add_argument("--data-seed", type=seed, default=0, help="which samples are drawn (default: 0)")
    g.add_argument("--data-dir", default=None, help=f"data folder (default: {DEFAULT_DATA_DIR} for the Fashion-MNIST "
                                                    f"sets, {DATASETS_ROOT}/NAME for other image data sets)")
    g.add_argument("--n", type=positive_int, help="synthetic: patches per sample (default 16)")
    g.add_argument("--d", type=positive_int, help="synthetic: patch dimension (default 64)")
    g.add_argument("--noise", type=float, help="synthetic: noise std per coordinate (default 0.1)")
    g.add_argument("--similarity", type=float, help="synthetic: cosine of irrelevant to class patterns (default 0.5)")
    g.add_argument("--num-irrelevant", type=positive_int, help="synthetic: label-irrelevant patterns (default 8)")
    g.add_argument("--classes", type=int, nargs=2, metavar=("POS", "NEG"),
                   help="fashion-patches: the image class of y=+1 and of y=-1 in the --data-dir folder (default: 1 9, "
                        "trouser vs ankle boot; the pMoE authors' sneaker vs sandal: 7 5)")
    g.add_argument("--grid", type=positive_int, help="fashion-patches: G x G images per canvas, n = G^2 (default 4)")


def data_spec(args: argparse.Namespace) -> DataSpec:
    d = DataSpec()
    name = args.data or d.name
    if name != "fashion-patches":
        refuse_flags(args, CANVAS_FLAGS, "to --data fashion-patches only")
    if name.startswith(FILE_PREFIX):
        refuse_flags(args, SYNTHETIC_FLAGS, "to --data synthetic only, not to a file")
        refuse_flags(args, ("data_dir",), "to the data sets of an IDX folder, not to --data file:PATH")
        return DataSpec.from_file(name[len(FILE_PREFIX):], args.test_data, args.samples, args.test_samples,
                                  args.data_seed)
    refuse_flags(args, ("test_data",), "to --data file:PATH only")
    keys = {"synthetic": SYNTHETIC_FLAGS, "fashion-patches": CANVAS_FLAGS}[name]
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
    g.add_argument("--epochs", type=nonnegative_int,
                   help=f"default: {d.epochs} for theory models, the preset's recipe's for vision")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default: {d.lr} plain SGD for theory models; vision: "
                                            "the recipe's, or the --optimizer family's)")
    g.add_argument("--batch-size", type=positive_int,
                   help=f"default: {d.batch_size} for theory models, the preset's recipe's for vision")
    g.add_argument("--router-epochs", type=nonnegative_int,
                   help=f"pmoe-separate: epochs of router training first (default: {d.router_epochs})")
    g.add_argument("--seed", type=seed, default=0, help="initialisation and batch order (default: 0)")
    g.add_argument("--eval-every", type=positive_int, metavar="E",
                   help="test metrics (theory models: and routing) every E epochs and after the last, for curves in "
                        f"metrics.jsonl (default: theory models after the last epoch only; vision every "
                        f"{FitConfig().eval_every}, each with a checkpoint)")


def train_config(args: argparse.Namespace) -> TrainConfig:
    d = TrainConfig()
    return TrainConfig(epochs=pick(args.epochs, d.epochs), batch_size=pick(args.batch_size, d.batch_size),
                       lr=pick(args.lr, d.lr), seed=args.seed, router_epochs=pick(args.router_epochs, d.router_epochs),
                       eval_every=pick(args.eval_every, d.eval_every))


def pick(value: Any, default: Any) -> Any:
    """`value`, or `default` where the flag was not given (None)."""
    return default if value is None else value


def refuse_flags(args: argparse.Namespace, names: tuple[str, ...], why: str) -> None:
    """A PmoeError naming the flags among `names` (dests) that were given, if any."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) not in (None, False, [])]
    check(not given, f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {why}")
