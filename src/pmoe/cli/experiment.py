"""`pmoe experiment NAME`: reproduce a claim of the papers; writes results.json, PNG plots and results.md."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from functools import partial

from pmoe.cli.common import emit, report_output
from pmoe.experiments import (image_samples, prune_domains, pruning_theory, routing_dynamics, sample_complexity,
                              spurious)
from pmoe.experiments.contract import Experiment
from pmoe.experiments.flags import add_report_args

# The sub-commands, in the order `pmoe experiment --help` lists them.
EXPERIMENTS: tuple[Experiment, ...] = (sample_complexity, pruning_theory, prune_domains, image_samples, spurious,
                                      routing_dynamics)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a paper experiment", description=__doc__)
    exp = p.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for experiment in EXPERIMENTS:
        s = exp.add_parser(experiment.NAME, help=experiment.HELP, description=experiment.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        experiment.add_arguments(s)
        add_report_args(s)
        s.set_defaults(func=partial(run, experiment))


def run(experiment: Experiment, args: argparse.Namespace) -> int:
    """Run the experiment of the flags into --out; print its report and one line on the run (or the JSON)."""
    cfg = experiment.config(args)
    with report_output(args, asdict(cfg)) as folder:
        summary = {**experiment.run_experiment(cfg, folder, args.workers, progress=not args.quiet), "out": args.out}
    count = experiment.COUNT
    emit(summary, args.json, [summary["report"], f"{summary[count]} {count} in {summary['seconds']} s; "
                                                 f"report in {args.out}"])
    return 0
