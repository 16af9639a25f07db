"""Flags of the vision runs (`pmoe train` with a vision preset, `pmoe finetune`): optimizer, schedule, device, data
and preset options; beside the shared data and training flags of `pmoe.cli.common`. The training flags change single
fields of the preset's recipe (`pmoe.train.recipes`)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pmoe.cli.common import pick
from pmoe.train.distributed.mesh import check_layout, is_main_process, world_size
from pmoe.errors import check
from pmoe.experiments.flags import add_recipe_args, device_name, nonnegative_int, positive_int, recipe_changes
from pmoe.options import parse_options
from pmoe.train import FitConfig
from pmoe.runs.images import ImageDataSpec, finished
from pmoe.train.recipes import Recipe, describe, override

# Dests of the flags below (for refusing them with a theory model) and of the theory-only flags of `common`.
VISION_FLAGS = ("optimizer", "momentum", "weight_decay", "warmup_steps", "schedule", "clip_norm", "max_steps",
                "augment", "no_augment", "no_bf16", "device", "workers", "eval_batch_size", "data_opt", "resume",
                "expert_parallel", "fsdp", "compile")
THEORY_FLAGS = ("n", "d", "noise", "similarity", "num_irrelevant", "router_epochs", "classes", "grid", "test_data")


def add_vision_args(p: argparse.ArgumentParser) -> None:
    d = FitConfig()
    g = p.add_argument_group("vision training (WRN, ViT, E3 presets): by default the preset's recipe (pmoe finetune: "
                             "the parent's); each flag, --lr, --epochs and --batch-size too, changes one field of it")
    add_recipe_args(g)
    g.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps (default: --epochs)")
    g.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA (float32)")
    g.add_argument("--device", type=device_name, help="auto (default: cuda if available), cpu, cuda, cuda:N")
    g.add_argument("--workers", type=nonnegative_int,
                   help="DataLoader workers decoding file-backed data sets (default: 0)")
    g.add_argument("--eval-batch-size", type=positive_int, help=f"default: {d.eval_batch_size}")
    g.add_argument("--data-opt", action="append", metavar="KEY=VALUE",
                   help="a field of the image data set's config, e.g. val_fraction=0.1 (repeatable)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (same flags) where it stopped")
    g.add_argument("--expert-parallel", type=positive_int, metavar="E", help="under torchrun: share each MoE layer's "
                   "experts out over groups of E processes (E divides the processes and the experts; default: 1)")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: shard the dense weights over the processes "
                   "with FSDP2 (default: a whole copy on each, kept in step by DDP)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step's forward and loss (one "
                   "process; the first steps compile, then steps run faster, on GPUs most)")


def fit_config(args: argparse.Namespace, recipe: Recipe) -> FitConfig:
    """`recipe` with the given flags' fields changed; printed on stderr (one line) unless --quiet or --json."""
    d = FitConfig()
    runtime = dict(max_steps=args.max_steps, bf16=not args.no_bf16, seed=args.seed, device=args.device or d.device,
                   eval_batch_size=pick(args.eval_batch_size, d.eval_batch_size),
                   num_workers=pick(args.workers, d.num_workers), eval_every=pick(args.eval_every, d.eval_every),
                   expert_parallel=pick(args.expert_parallel, d.expert_parallel), fsdp=args.fsdp,
                   compile=args.compile)
    check_layout(runtime["expert_parallel"], args.fsdp, world_size(), args.compile)  # before the data are read
    check(world_size() == 1 or not args.overwrite, "--overwrite under torchrun: every process would stage its own "
                                                   "copy of --out; remove the folder first, or train into a new one")
    cfg = override(recipe.fit_config(**runtime), **recipe_changes(args))
    if not (args.quiet or args.json) and is_main_process():
        print(f"pmoe {args.command}: {describe(cfg)}", file=sys.stderr)
    return cfg


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
