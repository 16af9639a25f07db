"""The `pmoe` command line. Each sub-command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Iterator

import pmoe
from pmoe.errors import PmoeError, os_message

# Sub-command modules, in the order `pmoe --help` lists them.
COMMANDS = ["train", "finetune", "eval", "route", "experiment", "demo", "hf_prune", "prune", "prune_sweep"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pmoe", description=pmoe.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pmoe.cli.{name}").register(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread: unfinished outputs and worker processes are cleaned up on the way out."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM raises `Terminated` (where signals can be handled: the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """The command line `argv` (default: sys.argv[1:]); returns the exit status. Ctrl-C and SIGTERM end it with one
    line from the start, while the sub-commands' modules (torch) are still being imported."""
    name = "pmoe"
    try:
        with _sigterm_raises():
            args = build_parser().parse_args(argv)
            name = f"pmoe {args.command}"
            return int(args.func(args) or 0)
    except (PmoeError, OSError) as e:
        print(f"{name}: error: {os_message(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        return 143


def console() -> None:
    """The `pmoe` console script (and `python -m pmoe`): main(), then exit with its status. A Ctrl-C or SIGTERM that
    comes while the interpreter shuts down, when the command's outputs are complete, exits at once with that status
    (no traceback from an atexit handler, no death by the signal)."""
    code = main()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: os._exit(code))
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
