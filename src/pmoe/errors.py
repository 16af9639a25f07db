"""User-facing errors: a message that names the bad value and what is expected.

The CLI prints these without a traceback and exits with status 2.
"""
from __future__ import annotations

import os
from pathlib import Path


class PmoeError(ValueError):
    """A bad input, file or configuration given to pmoe by its user."""


def check(condition: bool, message: str) -> None:
    """Raise PmoeError(message) unless `condition` holds."""
    if not condition:
        raise PmoeError(message)


def os_message(e: OSError) -> str:
    """One line for an error of the operating system (exists, not a folder, permission, disk full): what and where."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{e.strerror or type(e).__name__}{f': {where}' if where else ''}"


def check_folder(path: str | os.PathLike, what: str, expected: str = "") -> None:
    """Raise PmoeError unless `path` is a folder, saying whether it is missing or something else (a file)."""
    if not Path(path).is_dir():
        state = "is a file, not a folder" if Path(path).exists() else "does not exist"
        raise PmoeError(f"{what} {str(path)!r} {state}" + (f"; {expected}" if expected else ""))
