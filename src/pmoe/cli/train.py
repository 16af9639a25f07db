"""`pmoe train`: train a theory model (cnn | pmoe | pmoe-separate) on theory data, or a vision preset (WRN, ViT,
E3) on an image data set, and save a checkpoint. Vision runs write metrics.jsonl and a resumable checkpoint every
epoch; `--resume` continues a stopped run (re-run the same command with --resume)."""
from __future__ import annotations

import argparse

from pmoe.cli.common import (add_data_args, add_model_args, add_output_args, add_train_args, data_spec, emit,
                             is_theory_data, model_options, output, refuse_flags, routing_line, train_config)
from pmoe.cli.vision_args import (THEORY_FLAGS, VISION_FLAGS, add_vision_args, fit_config, image_data_spec,
                                  resumable)
from pmoe.data import DATASETS
from pmoe.errors import check
from pmoe.models import THEORY_MODELS
from pmoe.models.presets import PRESETS
from pmoe.options import parse_options
from pmoe.runs.theory import run as run_theory
from pmoe.runs.images import train_preset
from pmoe.train.recipes import recipe_for

MODEL_FLAGS = ("experts", "neurons", "l", "gate", "pool")  # theory models' architecture flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model and save a checkpoint", description=__doc__)
    p.add_argument("--model", choices=THEORY_MODELS + tuple(PRESETS), default="pmoe", metavar="MODEL",
                   help=f"theory model: {', '.join(THEORY_MODELS)} (default: pmoe, joint training); "
                        f"vision preset: {', '.join(PRESETS)}")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="vision presets: a config field, e.g. l=2, router=patch (repeatable); in_channels, "
                        "num_classes and image_size follow the data unless given")
    add_data_args(p)
    add_model_args(p)
    add_train_args(p)
    add_vision_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet  # on stderr: --json keeps stdout to the result
    if args.model in THEORY_MODELS:
        check(args.data is None or is_theory_data(args.data), f"theory model {args.model!r} takes --data "
              f"{', '.join(DATASETS)} or file:PATH.npz, got {args.data!r}; image data sets are for the vision presets")
        refuse_flags(args, VISION_FLAGS + ("model_opt",), "to vision presets only")
        data, cfg = data_spec(args), train_config(args)
        with output(args) as folder:
            result = run_theory(args.model, data, cfg, model_options(args), folder, progress)
    else:
        check(args.data is None or not is_theory_data(args.data), f"vision preset {args.model!r} takes an image data "
              f"set, got --data {args.data!r} (theory data; fashion-patches as images: fashion-patches-image)")
        refuse_flags(args, THEORY_FLAGS + MODEL_FLAGS, "to theory models only (vision presets: --model-opt KEY=VALUE)")
        fit = fit_config(args, recipe_for(args.model))
        data, overrides = image_data_spec(args), parse_options(args.model_opt, "--model-opt")
        with output(args, resumable=True) as folder:
            result = resumable(args, lambda: train_preset(args.model, data, fit, folder, overrides, args.resume,
                                                          progress))
    emit(result, args.json, summary_lines(result, args.out))
    return 0


def summary_lines(result: dict, out: str) -> list[str]:
    """The human form of a training result (theory or vision)."""
    lines = [f"{result['model']} on {result['data']}, N={result['samples']}, {result['epochs']} epochs, "
             f"{result['seconds']:.1f} s",
             f"train accuracy {result['train_accuracy']:.4f}   test accuracy {result['test_accuracy']:.4f}"
             + (f"   worst-group accuracy {result['worst_group_accuracy']:.4f}"
                if "worst_group_accuracy" in result else ""),
             f"trainable parameters {result['params']}   checkpoint: {out}"]
    if "routing" in result:
        lines.append(routing_line(result["routing"]))
    if "images_per_second" in result:
        lines.append(f"{result['images_per_second']:.0f} training images/s on {result['device']}")
    return lines
