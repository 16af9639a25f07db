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

import torch

from pmoe.cli.common import emit, positive_int, routing_line
from pmoe.runs.kinds import route_checkpoint
from pmoe.runs.route import RouteConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="which patches the experts' routers of a checkpoint pick", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder of a routed model (pmoe, pmoe-separate, WRN-pMoE, ViT-MoE, E3)")
    p.add_argument("--png", metavar="PATH", help="draw each expert's chosen cells on example test images per class")
    p.add_argument("--layer", type=int, default=-1, help="MoE layer, by index in depth order (default: -1, the last)")
    p.add_argument("--examples", type=positive_int, default=3, help="example images per class in the PNG (default: 3)")
    p.add_argument("--images", type=positive_int, default=1000, help="test images to count picks over (default: 1000)")
    p.add_argument("--device", help="vision checkpoints: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = RouteConfig(args.layer, args.images, args.examples, args.png, args.device)
    result = route_checkpoint(args.checkpoint, cfg)
    lines = (_vision_lines if "frequency" in result else _theory_lines)(result)
    if args.png:
        lines.append(f"routing picture: {args.png}")
    emit({"checkpoint": args.checkpoint, **result, **({"png": args.png} if args.png else {})}, args.json, lines)
    return 0


def _theory_lines(r: dict) -> list[str]:
    lines = [f"chance (l/n) = {r['chance']:.3f}; some expert picks the discriminative patch in "
             f"{r['any_expert']:.1%} of {r['test_samples']} test samples", routing_line(r),
             "expert   all      y=+1     y=-1"]
    return lines + [f"{s:>6}   {a:.3f}    {p:.3f}    {m:.3f}" for s, (a, p, m) in
                    enumerate(zip(r["per_expert"], r["per_class"]["+1"], r["per_class"]["-1"]))]


def _vision_lines(r: dict) -> list[str]:
    freq, classes = torch.tensor(r["frequency"]), r["classes"]
    C, k, gh, gw = freq.shape
    lines = [f"{r['model']} on {r['data']} test, MoE layer {r['layer']} (of {r['layers']}): {k} experts, {gh}x{gw} "
             f"cells of {r['cell']} px; per class, the (row, column) cells each expert takes most and the share of "
             f"the class's test images ({r['images']} in all) in which it takes them:"]
    for s in range(k):
        top = [freq[c, s].flatten().topk(min(3, gh * gw)) for c in range(C)]
        lines.append(f"expert {s}   " + "   ".join(f"{classes[c][:16]}: " + " ".join(
            f"({i // gw},{i % gw}) {v:.2f}" for v, i in zip(t.values.tolist(), t.indices.tolist()))
            for c, t in enumerate(top)))
    if "class_patch" in r:
        hits = r["class_patch"]
        lines.append(f"class patch covered by the best expert of each class in {hits['best_expert']:.3f} of the test "
                     f"canvases (chance {hits['chance_best_expert']:.3f} for the best of {k} experts, "
                     f"{hits['chance']:.3f} for one); per expert: " + " ".join(f"{h:.3f}" for h in hits["per_expert"]))
    if "class_patch_initial" in r:
        lines.append(f"at the run's initial weights: {r['class_patch_initial']['best_expert']:.3f}")
    return lines
