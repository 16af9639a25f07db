"""`pmoe route DIR`: how often each expert's router picks the class-discriminative patch, against chance l/n."""
from __future__ import annotations

import argparse

from pmoe.cli.common import emit
from pmoe.errors import check
from pmoe.metrics import discriminative_routing
from pmoe.runs import evaluate_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="discriminative-routing report of a pMoE checkpoint", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint folder of a pmoe or pmoe-separate model")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, cfg, _, test_ds = evaluate_checkpoint(args.checkpoint)
    check(hasattr(model, "moe"), f"{args.checkpoint} holds a {cfg['model']['model']!r} model, which has no routers")
    r = discriminative_routing(model, test_ds)
    lines = [f"chance (l/n) = {r['chance']:.3f}; some expert picks the discriminative patch in "
             f"{r['any_expert']:.1%} of {len(test_ds)} test samples",
             "expert   all      y=+1     y=-1"]
    lines += [f"{s:>6}   {a:.3f}    {p:.3f}    {m:.3f}" for s, (a, p, m) in
              enumerate(zip(r["per_expert"], r["per_class"]["+1"], r["per_class"]["-1"]))]
    emit({"checkpoint": args.checkpoint, **r}, args.json, lines)
    return 0
