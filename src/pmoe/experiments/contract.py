"""What an experiment module declares, so that `pmoe experiment NAME` is one loop over modules: its name, help and
flags, the config its flags make, and the run that writes its report. The module's docstring is its description."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol


class Experiment(Protocol):
    """A module such as `pmoe.experiments.spurious`."""

    NAME: str  # pmoe experiment NAME
    HELP: str  # its line in `pmoe experiment --help`
    COUNT: str  # the summary's key that counts the work done ("runs" or "seeds")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """Its flags, --out and --workers among them (the report flags --overwrite, --json, --quiet are the CLI's)."""

    def config(self, args: argparse.Namespace) -> Any:
        """Its dataclass config: the preset that the flags choose, with the fields that the flags give replaced."""

    def run_experiment(self, cfg: Any, out_dir: str | Path, workers: int | None, progress: bool) -> dict:
        """Run `cfg` into `out_dir`, `workers` at a time; the summary: 'report' (markdown), 'seconds', COUNT."""
