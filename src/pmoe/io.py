"""Atomic file and folder writes: nothing half-written is ever left behind.

Temporary paths are named `.NAME.pmoe-tmp-XXXXXXXX` beside their output NAME: hidden, never mistaken for a result,
and removed by the next write of the same output (`remove_stale`) when a killed process left them behind.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_MARK = ".pmoe-tmp-"


def temp_prefix(path: Path) -> str:
    """The name prefix of every temporary path of output `path`."""
    return f".{path.name}{TEMP_MARK}"


def remove_stale(path: str | os.PathLike) -> None:
    """Remove the temporaries of output `path` that a killed run left beside it (nothing else); an output that a kill
    left moved aside by `replace_dir` is put back first."""
    path = Path(path)
    for p in path.parent.glob(f"{glob.escape(temp_prefix(path))}*") if path.parent.is_dir() else []:
        if not path.exists() and (p / path.name).is_dir():
            os.rename(p / path.name, path)
        _remove(p)


def remove_stale_inside(folder: Path) -> None:
    """Remove the temporaries that killed writes left inside `folder` (of a run continued in it; nothing else)."""
    for p in folder.glob(f".*{TEMP_MARK}*"):
        _remove(p)


def _remove(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; put it in place of `path` only if the block succeeds.

    A file replaces any existing file; a folder replaces an existing folder only after it is complete (the caller
    decides about overwriting: `pmoe.outputs`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp/mkdtemp (and writers that recreate the file) leave it private: give it the usual mode
        tmp.chmod((0o777 if is_dir else 0o666) & ~umask)
        replace_dir(tmp, path) if is_dir else os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def replace_dir(new: Path, path: Path) -> None:
    """Rename folder `new` to `path`; an existing `path` is moved aside first and removed only once `new` is in place
    (restored if that rename fails)."""
    if not path.exists():
        os.rename(new, path)
        return
    old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    try:
        os.rename(path, old / path.name)  # may fail too (a mount point: EBUSY), leaving `old` empty
        try:
            os.rename(new, path)
        except BaseException:
            os.rename(old / path.name, path)
            raise
    finally:
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)


def finite_json(obj: Any) -> tuple[Any, bool]:
    """`obj` with every NaN and infinite float replaced by None (JSON has neither), and whether there was one."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, True
    if isinstance(obj, (dict, list, tuple)):
        items = [(k, *finite_json(v)) for k, v in (obj.items() if isinstance(obj, dict) else enumerate(obj))]
        values = {k: v for k, v, _ in items} if isinstance(obj, dict) else [v for _, v, _ in items]
        return values, any(bad for _, _, bad in items)
    return obj, False


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically; a file holding these bytes already is left untouched."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (untouched if it holds this text already)."""
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
