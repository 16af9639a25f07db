"""Flag groups shared by the experiments and the CLI, each defined once: integer checks, the report tail, the
training-recipe flags and the theory sweeps' data flags; `given` turns the flags that were given into config fields
(for `dataclasses.replace`)."""
from __future__ import annotations

import argparse
from typing import Any, Iterable

from pmoe.train.optim import DEFAULTS, OPTIMIZERS, SCHEDULES
from pmoe.train.recipes import FIELDS

THEORY_DATA = ("fashion-patches", "synthetic")  # the theory sweeps' --data


COUNT_MAX = 2**31 - 1  # beyond any run of this library; larger counts overflow C integers in torch, tqdm, range
SEED_MAX = 2**63 - 1  # torch's generators take 64-bit seeds; numpy's and Python's any size: the common range


def _int_in(text: str, low: int, high: int, high_name: str) -> int:
    """argparse type: an integer in low .. high (`high_name` in the message)."""
    value = int(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be an integer in {low} .. {high_name}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer in 1 .. 2^31 - 1."""
    return _int_in(text, 1, COUNT_MAX, "2^31 - 1")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer in 0 .. 2^31 - 1."""
    return _int_in(text, 0, COUNT_MAX, "2^31 - 1")


def seed(text: str) -> int:
    """argparse type: a random seed, an integer in 0 .. 2^63 - 1."""
    return _int_in(text, 0, SEED_MAX, "2^63 - 1")


def device_name(text: str) -> str:
    """argparse type: a --device value, not empty (its name is checked where the device is made)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a device (auto, cpu, cuda or cuda:N), got {text!r}")
    return text


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """{dest: value} of the flags among `names` (dests) that were given (not None)."""
    values = vars(args)
    return {k: values[k] for k in names if values[k] is not None}


def add_report_args(p: argparse.ArgumentParser) -> None:
    """--overwrite, --json and --quiet: the tail of every experiment (progress on stderr, the summary on stdout)."""
    p.add_argument("--overwrite", action="store_true", help="replace a folder holding another report (once the new "
                                                            "one is complete)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (the last stdout line)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def add_out(p: argparse.ArgumentParser, help: str = "report folder") -> None:
    """--out, an experiment's report folder."""
    p.add_argument("--out", required=True, help=help)


def add_workers(p: argparse.ArgumentParser, what: str = "runs") -> None:
    """--workers: `what` run in parallel processes (default: CPU cores)."""
    p.add_argument("--workers", type=positive_int, help=f"parallel {what} (default: CPU cores)")


def add_recipe_args(g: argparse._ArgumentGroup) -> None:
    """The flags that change single fields of a training recipe (`pmoe.train.recipes.override`), beside --lr,
    --epochs and --batch-size where a command has them."""
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="another family brings its own lr, momentum and weight "
                   "decay unless given (" + "; ".join(f"{k}: lr {v['lr']}, weight decay {v['weight_decay']}"
                                                      for k, v in DEFAULTS.items()) + ")")
    g.add_argument("--momentum", type=float, help="SGD momentum, AdamW beta1")
    g.add_argument("--weight-decay", type=float, help="on weights of 2+ dims")
    g.add_argument("--warmup-steps", type=nonnegative_int, help="linear warm-up steps, then the schedule; taken as "
                   "given (a recipe's own warm-up is capped at a fraction of the run)")
    g.add_argument("--schedule", choices=SCHEDULES, help="after the warm-up (cosine: to 0)")
    g.add_argument("--clip-norm", type=float, help="clip gradients to this global norm; 0: none")
    aug = g.add_mutually_exclusive_group()
    aug.add_argument("--augment", action="store_true", help="random crop + flip of the training images")
    aug.add_argument("--no-augment", action="store_true", help="no augmentation")


def recipe_changes(args: argparse.Namespace, fields: tuple[str, ...] = FIELDS) -> dict:
    """The recipe fields among `fields` that the flags give."""
    augment = True if args.augment else False if args.no_augment else None
    values = {k: augment if k == "augment" else getattr(args, k) for k in fields}
    return {k: v for k, v in values.items() if v is not None}


def add_theory_args(p: argparse.ArgumentParser, data: str, samples: dict[str, Any], seeds: str, epochs: str,
                    models: str) -> None:
    """The theory sweeps' data and training flags, with each experiment's help texts (`samples`: the keywords of
    --samples beside its type)."""
    p.add_argument("--data", choices=THEORY_DATA, help=data)
    p.add_argument("--data-dir", help="IDX folder (e.g. MNIST) instead of Debian's Fashion-MNIST")
    p.add_argument("--samples", type=positive_int, **samples)
    p.add_argument("--seeds", type=positive_int, help=seeds)
    p.add_argument("--epochs", type=positive_int, help=epochs)
    p.add_argument("--models", nargs="+", metavar="MODEL", help=models)


def theory_changes(args: argparse.Namespace, data_options: dict) -> dict[str, Any]:
    """The config fields that `add_theory_args`' flags give; --data-dir joins `data_options` (the preset's)."""
    changes = given(args, ("data", "samples", "seeds", "epochs", "models"))
    if args.data_dir:
        changes["data_options"] = {**data_options, "data_dir": args.data_dir}
    return changes
