"""`pmoe finetune PRETRAINED_DIR --data ... --out DIR`: continue training a checkpoint on new data.

Vision checkpoints: every weight is kept, except the classification head, which is initialised afresh when the data
has another number of classes; the images must have the checkpoint's channels and size; training takes the recipe of
the checkpoint's preset (`pmoe.train.recipes`), each flag changing one field. Theory checkpoints: the
model trains on new theory data of the same n and d (default: the checkpoint's) with the paper's recipe.
config.json records {"pretrained": {"path": ..., "sha256": <SHA-256 of the parent's model.safetensors>}}."""
from __future__ import annotations

import argparse

from pmoe.checkpoints import read_config
from pmoe.cli.common import (add_data_args, add_output_args, add_train_args, data_spec, emit, is_theory_data,
                             output, refuse_flags, train_config)
from pmoe.cli.train import summary_lines
from pmoe.cli.vision_args import THEORY_FLAGS, VISION_FLAGS, add_vision_args, fit_config, image_data_spec, resumable
from pmoe.data import DATASETS
from pmoe.errors import check
from pmoe.runs.theory import finetune as finetune_theory
from pmoe.runs.images import finetune_preset
from pmoe.train.recipes import checkpoint_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a checkpoint on new data", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pretrained", help="checkpoint folder written by `pmoe train` (or `pmoe finetune`)")
    add_data_args(p)
    add_train_args(p)
    add_vision_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet  # on stderr: --json keeps stdout to the result
    cfg = read_config(args.pretrained)
    if cfg["arch"] == "theory":
        check(args.data is None or is_theory_data(args.data), f"{args.pretrained} holds a theory model; it takes "
              f"--data {', '.join(DATASETS)} or file:PATH.npz, got {args.data!r}")
        refuse_flags(args, VISION_FLAGS, "to vision checkpoints only")
        if (args.data or "synthetic") == "synthetic":  # of the checkpoint's shape unless told otherwise
            for k in ("n", "d"):
                setattr(args, k, getattr(args, k) or cfg["model"][k])
        data, train_cfg = data_spec(args), train_config(args)
        with output(args) as folder:
            result = finetune_theory(args.pretrained, data, train_cfg, folder, progress)
    else:
        check(args.data is None or not is_theory_data(args.data), f"{args.pretrained} holds a vision model; it takes "
              f"an image data set, got --data {args.data!r}")
        refuse_flags(args, THEORY_FLAGS, "to theory checkpoints only")
        fit = fit_config(args, checkpoint_recipe(cfg))  # the parent's preset's recipe, flags on top
        data = image_data_spec(args)
        with output(args, resumable=True) as folder:
            result = resumable(args, lambda: finetune_preset(args.pretrained, data, fit, folder, args.resume,
                                                             progress))
    emit(result, args.json, summary_lines(result, args.out))
    return 0
