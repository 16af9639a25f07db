"""`pmoe route DIR`: which patches the routers of a checkpoint pick.

Theory checkpoints (pmoe, pmoe-separate): how often each expert picks the class-discriminative patch, against chance
l/n, and the best expert of each class against the same routers at the run's initial weights (rebuilt from its config
and seed; random routers can favour the class patch) and against the chance level of a max over k experts.
Vision checkpoints (WRN-pMoE, ViT-MoE, E3): per class, the share of test images in which each expert of one MoE
layer takes each cell (a ViT patch, a region of WRN-pMoE's feature map), most taken first; on the patch-canvas
images also how often each expert's cells cover the class patch, against chance and the run's initial weights.
`--png PATH` draws, for both, each expert's cells on example test images of every class, beside per-class heat maps
of those shares."""
from __future__ import annotations

import argparse

from pmoe.checkpoints import check_finite_weights
from pmoe.cli.common import emit, positive_int
from pmoe.experiments.flags import device_name
from pmoe.outputs import check_output_file
from pmoe.runs.kinds import kind_of_checkpoint
from pmoe.runs.route import RouteConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="which patches the experts' routers of a checkpoint pick", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder of a routed model (pmoe, pmoe-separate, WRN-pMoE, ViT-MoE, E3)")
    p.add_argument("--png", metavar="PATH", help="draw each expert's chosen cells on example test images per class")
    p.add_argument("--layer", type=int, default=-1, help="MoE layer, by index in depth order (default: -1, the last)")
    p.add_argument("--examples", type=positive_int, default=3, help="example images per class in the PNG (default: 3)")
    p.add_argument("--images", type=positive_int, default=1000, help="test images to count picks over (default: 1000)")
    p.add_argument("--device", type=device_name, help="vision checkpoints: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --png file")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.png is not None:
        check_output_file(args.png, [args.checkpoint], "--png", ".png", args.overwrite)
    cfg = RouteConfig(args.layer, args.images, args.examples, args.png, args.device)
    kind = kind_of_checkpoint(args.checkpoint)
    check_finite_weights(args.checkpoint, "route")
    result = kind.route(args.checkpoint, cfg)
    lines = kind.route_lines(result)
    if args.png:
        lines.append(f"routing picture: {args.png}")
    emit({"checkpoint": args.checkpoint, **result, **({"png": args.png} if args.png else {})}, args.json, lines)
    return 0
