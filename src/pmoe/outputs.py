"""The one output-path policy of every command that writes a folder (train, finetune, prune, prune-sweep,
prune-combine, experiments, demo).

An output may not be, lie inside or contain any of the command's inputs (checkpoint folders, data folders and
files), nor the shared data sets folder `DATA_ROOT`, which the data sets read by default whether a command names it
or not. A folder holding files is refused unless it is the same run (`same_run`: resumed or re-run in place) or
`overwrite` is given; an overwritten folder is replaced only once the new one is complete. Temporaries of the
output that a killed run left beside it (and, for a run continued in place, inside it) are removed first.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

from pmoe.errors import PmoeError, check, os_message
from pmoe.io import TEMP_MARK, atomic_path, remove_stale, remove_stale_inside

# Where Debian's dataset packages install (Fashion-MNIST's) and every image data set's default folder lies
# (`pmoe.data`): read, never written.
DATA_ROOT = "/usr/share/datasets"


def check_apart(out: Path, inputs: Iterable[str | os.PathLike | None], flag: str = "--out") -> None:
    """Refuse an output (given as `flag`) that is, lies inside or contains one of `inputs` (None entries are
    skipped)."""
    o = out.resolve()
    for given in filter(None, inputs):
        i = Path(given).resolve()
        where = "is" if o == i else "is inside" if i in o.parents else "contains" if o in i.parents else None
        check(where is None, f"{flag} {out} {where} the input {given}; write the output apart from the inputs")


def check_output_file(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], flag: str,
                      suffix: str, overwrite: bool = False) -> None:
    """Refuse an output file (given as `flag`, named *`suffix`) among or inside the inputs or `DATA_ROOT`, that is
    a folder, or that exists already unless `overwrite`; it is then written with `pmoe.io.atomic_path`."""
    given, out = os.fspath(out), Path(out)
    check(out.name.endswith(suffix) and len(out.name) > len(suffix),
          f"{flag} {given!r}: expected a file name ending in {suffix}")
    check_apart(out, [*inputs, DATA_ROOT], flag)
    check(not out.is_dir(), f"{flag} {out} is a folder; give a file name")
    check(overwrite or not out.exists(), f"{flag} {out} exists already; choose a new name or pass --overwrite")


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
                  same_run: bool = False, staged: bool = True, differs: str = "") -> Iterator[Path]:
    """Yield the folder to write output `out` into, after checking it against the policy above.

    `staged`: always write into a temporary folder that replaces `out` once the block succeeds (a failed run leaves
    nothing). Otherwise (resumable runs) a new, empty or same-run `out` is written in place, and only an overwritten
    one is staged. `differs`: how the run in a used folder differs from this one, for the message.
    """
    out = Path(out)
    check_apart(out, [*inputs, DATA_ROOT])
    check(not out.exists() or out.is_dir(), f"--out {out} is an existing file, not a folder; choose a folder")
    above = next(p for p in out.absolute().parents if p.exists())
    check(above.is_dir(), f"--out {out} lies under {above}, a file, not a folder; choose a folder")
    stack = contextlib.ExitStack()
    try:
        remove_stale(out)
        new = not out.exists()
        used = not new and any(TEMP_MARK not in p.name for p in out.iterdir())  # a killed run's temporaries: not
        check(not used or overwrite or same_run, f"--out {out} already holds files of another run"
                                                 f"{f' ({differs})' if differs else ''}; choose a new or empty "
                                                 "folder, or pass --overwrite to replace it")
        if not staged and (same_run or not used):
            if not same_run:  # (a run to resume must exist already)
                out.mkdir(parents=True, exist_ok=True)
            if out.is_dir():
                remove_stale_inside(out)
            folder = out
        else:
            folder = stack.enter_context(atomic_path(out, is_dir=True))
    except OSError as e:
        raise PmoeError(f"cannot write --out {out}: {os_message(e)}") from None
    try:
        with stack:
            yield folder
    except BaseException:
        if new and folder == out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no empty folder behind
        raise
