"""How the flags of `pmoe train` and `pmoe finetune` become the specs of each kind of run (`pmoe.runs.kinds`):
which --data it takes, which flags belong to the other kind (refused), its data spec, training config and model
overrides."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from pmoe.cli.common import data_spec, is_theory_data, model_options, refuse_flags, train_config
from pmoe.cli.vision_args import THEORY_FLAGS, VISION_FLAGS, fit_config, image_data_spec
from pmoe.data import DATASETS
from pmoe.errors import check
from pmoe.options import parse_options
from pmoe.runs.kinds import RunKind
from pmoe.train.recipes import Recipe


@dataclass(frozen=True)
class KindArgs:
    noun: str  # what `pmoe train --model` calls a model of this kind
    takes: Callable[[str], bool]  # whether --data NAME is data of this kind
    data_help: str  # what --data it takes, for errors
    flags: tuple[str, ...]  # dests of the flags only this kind takes
    model_flags: tuple[str, ...]  # ... and of its model flags (pmoe train)
    owners: tuple[str, str]  # who alone takes its flags, as `pmoe train` and `pmoe finetune` say it
    specs: Callable[[argparse.Namespace, Callable[[], Recipe]], tuple[Any, Any]]  # (data spec, training config)
    overrides: Callable[[argparse.Namespace], dict]  # the model's config fields the flags give


def _vision_specs(args: argparse.Namespace, recipe: Callable[[], Recipe]) -> tuple[Any, Any]:
    fit = fit_config(args, recipe())  # says the recipe on stderr first
    return image_data_spec(args), fit


ARGS = {
    "theory": KindArgs("theory model", is_theory_data, f"--data {', '.join(DATASETS)} or file:PATH.npz (image data "
                       "sets are for the vision presets)", THEORY_FLAGS, ("experts", "neurons", "l", "gate", "pool"),
                       ("theory models only (vision presets: --model-opt KEY=VALUE)", "theory checkpoints only"),
                       lambda args, recipe: (data_spec(args), train_config(args)), model_options),
    "vision": KindArgs("vision preset", lambda name: not is_theory_data(name), "an image data set (fashion-patches "
                       "as images: fashion-patches-image)", VISION_FLAGS, ("model_opt",),
                       ("vision presets only", "vision checkpoints only"), _vision_specs,
                       lambda args: parse_options(args.model_opt, "--model-opt")),
}


def kind_specs(args: argparse.Namespace, kind: RunKind, subject: str,
               recipe: Callable[[], Recipe]) -> tuple[Any, Any]:
    """(data spec, training config) of `kind` from the flags of `pmoe train` or `pmoe finetune`, after checking
    --data and refusing the flags of the other kinds. `subject` names the model or checkpoint in errors; `recipe`
    gives the training recipe of a vision run."""
    a, train = ARGS[kind.name], args.command == "train"
    check(args.data is None or a.takes(args.data), f"{subject} takes {a.data_help}, got --data {args.data!r}")
    for name, other in ARGS.items():
        if name != kind.name:
            refuse_flags(args, other.flags + (other.model_flags if train else ()), f"to {other.owners[not train]}")
    return a.specs(args, recipe)
