"""`pmoe hf-prune`: data-free expert pruning of a local Hugging Face MoE checkpoint, streamed shard by shard."""
from __future__ import annotations

import argparse
import json

from pmoe.experiments.flags import seed
from pmoe.hf import METHODS, PruneSpec, prune_checkpoint


LAYERS_MAX = 99_999  # above any model's depth: a range up to it stays small enough to spell out


def parse_layers(text: str) -> tuple[int, ...]:
    """'0-2,5' -> (0, 1, 2, 5)."""
    try:
        out: list[int] = []
        for part in text.split(","):
            first, _, last = part.partition("-")
            lo, hi = int(first), int(last or first)
            if not 0 <= lo <= hi <= LAYERS_MAX:
                raise ValueError(part)
            out.extend(range(lo, hi + 1))
        return tuple(out)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer list; expected numbers in 0..{LAYERS_MAX} and "
                                         "ascending ranges like 0-3,5")


def parse_protect(text: str) -> tuple[tuple[int, int], ...]:
    """'0:3,2:5' -> ((0, 3), (2, 5))."""
    try:
        return tuple((int(layer), int(expert)) for layer, expert in (part.split(":") for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a protect list; expected LAYER:EXPERT pairs like 0:3,2:5")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hf-prune", help="prune experts of a Hugging Face MoE checkpoint without data",
        description="Keep, in every MoE layer, the experts whose router norm grew most during fine-tuning "
                    "(Δ = ‖w^(T)‖ − ‖w^(0)‖), and write the pruned checkpoint shard by shard.")
    p.add_argument("--base", required=True, help="pretrained model folder (only its routers are read)")
    p.add_argument("--finetuned", required=True, help="fine-tuned model folder of the same architecture")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--keep", type=int, help="experts kept per MoE layer (1..k-1)")
    size.add_argument("--ratio", type=float, help="fraction of experts pruned per MoE layer, in (0, 1)")
    p.add_argument("--method", choices=METHODS, default="router-norm-change",
                   help="router-norm-change: signed change of the router norm (paper, default); "
                        "router-norm-change-abs: its absolute value; router-delta-norm: norm of the router's change; "
                        "router-norm: fine-tuned norm alone; random")
    p.add_argument("--layers", type=parse_layers,
                   help="MoE layer numbers to prune, e.g. 0-31, counting MoE blocks in key order (default: all)")
    p.add_argument("--protect", type=parse_protect, default=(),
                   help="experts never pruned, as MoE-layer:expert pairs, e.g. 0:3,2:5 (layers numbered as --layers)")
    p.add_argument("--seed", type=seed, default=0, help="seed of --method random (default 0)")
    p.add_argument("--out", required=True, help="output folder (new or empty, unless --overwrite), apart from "
                                                "--base and --finetuned")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a folder holding other files (once the new checkpoint is complete)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = PruneSpec(keep=args.keep, ratio=args.ratio, method=args.method, layers=args.layers, seed=args.seed,
                     protect=args.protect)
    report = prune_checkpoint(args.base, args.finetuned, args.out, spec, progress=not args.quiet,
                              overwrite=args.overwrite)
    print(json.dumps(report.to_dict()) if args.json else f"{report.summary()}\nwrote {args.out}")
    return 0
