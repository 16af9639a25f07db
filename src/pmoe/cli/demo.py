"""`pmoe demo`: the end-to-end demo on the embedded default data (Fashion-MNIST from Debian, synthetic data)."""
from __future__ import annotations

import argparse

from pmoe.cli.common import emit, report_output
from pmoe.experiments.demo import run_demo
from pmoe.experiments.flags import add_report_args, add_workers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo into one report folder", description=__doc__)
    p.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo)")
    add_workers(p)
    add_report_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with report_output(args, None) as folder:
        summary = run_demo(folder, args.workers, progress=not args.quiet)
    emit(summary, args.json, [f"demo finished in {summary['seconds']} s; open {args.out}/README.md"])
    return 0
