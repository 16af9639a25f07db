"""Flags of the vision runs (`pmoe train` with a vision preset, `pmoe finetune`): optimizer, schedule, device, data
and preset options; beside the shared data and training flags of `pmoe.cli.common`."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pmoe.cli.common import pick, positive_int
from pmoe.options import parse_options
from pmoe.train import FitConfig, OptimConfig
from pmoe.train.image_runs import ImageDataSpec, finished
from pmoe.train.optim import DEFAULTS, OPTIMIZERS, SCHEDULES

# Dests of the flags below (for refusing them with a theory model) and of the theory-only flags of `common`.
VISION_FLAGS = ("optimizer", "momentum", "weight_decay", "warmup_steps", "schedule", "clip_norm", "max_steps",
                "no_augment", "no_bf16", "device", "workers", "eval_batch_size", "data_opt", "resume")
THEORY_FLAGS = ("n", "d", "noise", "similarity", "num_irrelevant", "router_epochs")


def add_vision_args(p: argparse.ArgumentParser) -> None:
    d, o = FitConfig(), OptimConfig()
    g = p.add_argument_group("vision training (WRN, ViT, E3 presets)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {o.name} (momentum {o.momentum})")
    g.add_argument("--momentum", type=float, help=f"SGD momentum, AdamW beta1 (default: {o.momentum})")
    g.add_argument("--weight-decay", type=float, help="on weights of 2+ dims (default: "
                   + ", ".join(f"{v['weight_decay']} {k}" for k, v in DEFAULTS.items()) + ")")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps, then the schedule (default: 0)")
    g.add_argument("--schedule", choices=SCHEDULES, help=f"after the warm-up (default: {o.schedule}, to 0)")
    g.add_argument("--clip-norm", type=float, help="clip gradients to this global norm (default: no clipping)")
    g.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps (default: --epochs)")
    g.add_argument("--no-augment", action="store_true", help="no random crop + flip of the training images")
    g.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA (float32)")
    g.add_argument("--device", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    g.add_argument("--workers", type=int, help="DataLoader workers decoding file-backed data sets (default: 0)")
    g.add_argument("--eval-batch-size", type=positive_int, help=f"default: {d.eval_batch_size}")
    g.add_argument("--data-opt", action="append", metavar="KEY=VALUE",
                   help="a field of the image data set's config, e.g. val_fraction=0.1 (repeatable)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (same flags) where it stopped")


def fit_config(args: argparse.Namespace) -> FitConfig:
    d, o = FitConfig(), OptimConfig()
    name = args.optimizer or o.name
    optim = OptimConfig(name=name, lr=pick(args.lr, DEFAULTS[name]["lr"]), momentum=pick(args.momentum, o.momentum),
                        weight_decay=pick(args.weight_decay, DEFAULTS[name]["weight_decay"]),
                        warmup_steps=pick(args.warmup_steps, o.warmup_steps), schedule=args.schedule or o.schedule,
                        clip_norm=args.clip_norm)
    return FitConfig(epochs=pick(args.epochs, d.epochs), max_steps=args.max_steps,
                     batch_size=pick(args.batch_size, d.batch_size), optim=optim, augment=not args.no_augment,
                     bf16=not args.no_bf16, seed=args.seed, device=args.device or d.device,
                     eval_batch_size=pick(args.eval_batch_size, d.eval_batch_size),
                     num_workers=pick(args.workers, d.num_workers))


def image_data_spec(args: argparse.Namespace) -> ImageDataSpec:
    return ImageDataSpec(args.data or ImageDataSpec().name, args.data_dir, args.samples, args.test_samples,
                         args.data_seed, parse_options(args.data_opt, "--data-opt"))


def resumable(args: argparse.Namespace, train: Callable[[], dict]) -> dict:
    """`train()`'s result; says so on stderr when --resume found the run in --out finished (nothing trained)."""
    done = args.resume and finished(args.out)
    result = train()
    if done:
        print(f"pmoe {args.command}: the run in {args.out} had finished; nothing trained (its result follows)",
              file=sys.stderr)
    return result
