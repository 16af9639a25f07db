"""`pmoe train`: train a theory model (cnn | pmoe | pmoe-separate) on theory data, or a vision preset (WRN, ViT,
E3) on an image data set, and save a checkpoint. Vision runs write metrics.jsonl and a resumable checkpoint every
epoch; `--resume` continues a stopped run (re-run the same command with --resume)."""
from __future__ import annotations

import argparse

from pmoe.cli.common import add_data_args, add_model_args, add_output_args, add_train_args, emit, output
from pmoe.runs.summaries import routing_line
from pmoe.cli.kind_args import ARGS, kind_specs
from pmoe.cli.vision_args import add_vision_args, resumable
from pmoe.runs.kinds import KINDS, kind_of_model
from pmoe.train.recipes import recipe_for


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model and save a checkpoint", description=__doc__)
    p.add_argument("--model", choices=[m for k in KINDS for m in k.models], default="pmoe", metavar="MODEL",
                   help="; ".join(f"{ARGS[k.name].noun}: {', '.join(k.models)}" for k in KINDS)
                        + " (default: pmoe, joint training)")
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
    kind = kind_of_model(args.model)
    data, cfg = kind_specs(args, kind, f"{ARGS[kind.name].noun} {args.model!r}", lambda: recipe_for(args.model))
    overrides = ARGS[kind.name].overrides(args)
    with output(args, resumable=kind.resumable) as folder:
        result = resumable(args, lambda: kind.train(args.model, data, cfg, folder, overrides, args.resume,
                                                    not args.quiet))  # progress on stderr: --json keeps stdout
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
