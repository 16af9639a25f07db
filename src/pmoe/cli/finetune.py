"""`pmoe finetune PRETRAINED_DIR --data ... --out DIR`: continue training a checkpoint on new data.

Vision checkpoints: every weight is kept, except the classification head, which is initialised afresh when the data
has another number of classes; the images must have the checkpoint's channels and size; training takes the recipe of
the checkpoint's preset (`pmoe.train.recipes`), each flag changing one field. Theory checkpoints: the
model trains on new theory data of the same n and d (default: the checkpoint's) with the paper's recipe.
config.json records {"pretrained": {"path": ..., "sha256": <SHA-256 of the parent's model.safetensors>}}."""
from __future__ import annotations

import argparse

from pmoe.checkpoints import read_config
from pmoe.cli.common import add_data_args, add_output_args, add_train_args, emit, output
from pmoe.cli.kind_args import kind_specs
from pmoe.cli.train import summary_lines
from pmoe.cli.vision_args import add_vision_args, resumable
from pmoe.runs.kinds import kind_of_arch
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
    cfg = read_config(args.pretrained)
    kind = kind_of_arch(cfg["arch"])
    data, train_cfg = kind_specs(args, kind, f"{args.pretrained} holds a {kind.name} model; it",
                                 lambda: checkpoint_recipe(cfg))  # the parent's preset's recipe, flags on top
    with output(args, resumable=kind.resumable) as folder:
        result = resumable(args, lambda: kind.finetune(args.pretrained, data, train_cfg, folder, args.resume,
                                                       not args.quiet))  # progress on stderr: --json keeps stdout
    emit(result, args.json, summary_lines(result, args.out))
    return 0
