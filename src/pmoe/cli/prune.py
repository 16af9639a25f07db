"""`pmoe prune FINETUNED_DIR --pretrained PRETRAINED_DIR (--keep K | --ratio r) --out DIR`: remove the experts of
every MoE layer that a criterion ranks lowest, and save the pruned checkpoint (`pmoe eval` reads it back).

Methods: router-norm-change (default; the paper's Δ = ‖w^(T)‖ − ‖w^(0)‖, no data), router-norm-change-abs (|Δ|),
router-delta-norm (‖w^(T) − w^(0)‖), router-norm (‖w^(T)‖), random (--seed); on --calib-samples training samples:
frequency (share of tokens routed), gate-mass (sum of gates), saliency (mean gate × ‖expert output‖, REAP).
Modes: zero (router keeps every expert, tokens sent to a removed one get nothing from it: the official behaviour)
or truncate (router rows removed too: routing over the kept experts only)."""
from __future__ import annotations

import argparse

from pmoe.cli.common import emit
from pmoe.experiments.flags import add_recipe_args, device_name, nonnegative_int, positive_int, recipe_changes, seed
from pmoe.runs.prune import PruneConfig, prune_checkpoint
from pmoe.prune.registry import METHODS
from pmoe.prune.surgery import MODES
from pmoe.runs.tasks import RECIPE_FIELDS, FinetuneConfig


def add_prune_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by `pmoe prune` and `pmoe prune-sweep`."""
    p.add_argument("finetuned", help="fine-tuned checkpoint folder (`pmoe finetune`)")
    p.add_argument("--pretrained", help="the checkpoint it was fine-tuned from (needed by the router-change methods)")
    p.add_argument("--mode", choices=MODES, default="zero", help="default: zero")
    p.add_argument("--finetune-steps", type=nonnegative_int, default=0,
                   help="post-pruning fine-tune steps (default 0: none)")
    g = p.add_argument_group("post-pruning fine-tune of a vision checkpoint: its preset's recipe (pmoe.train.recipes), "
                             "each flag changing one field; the pruning paper's: --optimizer sgd --lr 0.01 "
                             "--weight-decay 0 --clip-norm 10")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--batch-size", type=positive_int)
    add_recipe_args(g)
    p.add_argument("--calib-samples", type=positive_int, default=256,
                   help="training samples of the data-driven methods (default: 256)")
    p.add_argument("--seed", type=seed, default=0, help="of method random and of the fine-tune (default: 0)")
    p.add_argument("--device", type=device_name,
                   default="auto", help="vision models: auto | cpu | cuda[:N] (default: auto)")
    p.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(steps=args.finetune_steps, seed=args.seed, **recipe_changes(args, RECIPE_FIELDS))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune the experts of a fine-tuned checkpoint", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prune_args(p)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--keep", type=int, help="experts kept per MoE layer (1..k-1)")
    size.add_argument("--ratio", type=float, help="fraction of experts pruned per MoE layer, in (0, 1)")
    p.add_argument("--method", choices=METHODS, default="router-norm-change", help="default: router-norm-change")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = PruneConfig(args.method, args.keep, args.ratio, args.mode, args.seed, args.calib_samples,
                      finetune_config(args))
    r = prune_checkpoint(args.finetuned, args.pretrained, cfg, args.out, args.overwrite, args.device)
    lines = [f"{r['method']} ({r['mode']}): kept {r['keep']} experts per MoE layer; parameters "
             f"{r['params_before']:,} -> {r['params_after']:,}, FLOPs/sample {r['flops_before']:,} -> "
             f"{r['flops_after']:,}",
             f"test accuracy {r['test_accuracy_before']:.4f} -> {r['test_accuracy_after']:.4f}"
             + (f" -> {r['test_accuracy_finetuned']:.4f} after {args.finetune_steps} fine-tune steps"
                if "test_accuracy_finetuned" in r else ""),
             f"pruned checkpoint: {args.out} ({r['seconds']:.1f} s)"]
    emit(r, args.json, lines)
    return 0
