"""CIFAR-10 and CIFAR-100, "python version": pickled batches of uint8 rows (N, 3·32·32), in memory."""
from __future__ import annotations

import codecs
import functools
import importlib
import os
import pickle
import reprlib
from pathlib import Path

import numpy as np
import torch

from pmoe.data.vision.dataset import STATS, ImageDataset
from pmoe.data.vision.files import find_folder
from pmoe.errors import PmoeError, check

# num_classes -> (folder, train files, test file, meta file, label key, label-names key), as the archives have them
_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
         b"labels", b"label_names"),
    100: ("cifar-100-python", ["train"], "test", "meta", b"fine_labels", b"fine_label_names"),
}
_COARSE = (b"coarse_labels", b"coarse_label_names")  # CIFAR-100's 20 superclasses


def _short(value: object) -> str:
    """A short one-line repr of `value`, for messages."""
    return " ".join(reprlib.repr(value).split())


def _numpy_internal(module: str, name: str) -> object:
    """numpy's `module.name` ('multiarray', 'numeric'), from numpy 2's numpy._core or numpy 1's numpy.core
    (numpy 2 warns on numpy.core, numpy < 1.26 has no numpy._core)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            pass
    raise PmoeError(f"numpy {np.__version__} has no {module}.{name}, needed to unpickle numpy arrays")


def _empty_bytes(*args: object) -> bytes:
    """`bytes()`, as protocols 0-2 pickle b'' (as __builtin__.bytes): no argument, so no allocation of any size."""
    if args:
        raise pickle.UnpicklingError(f"it calls bytes{args!r:.40}, but a pickled b'' calls bytes() without arguments")
    return b""


def _latin1(text: object, encoding: object) -> bytes:
    """`_codecs.encode(text, 'latin1')`, as protocols 0-2 pickle non-empty bytes; no other codec."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"it calls _codecs.encode with codec {encoding!r:.40}, not 'latin1' on a str")
    return codecs.encode(text, "latin1")


class _NdarrayType:
    """What numpy.ndarray unpickles to: the first argument of _reconstruct, never a callable that would make an
    uninitialised array of any size from a few bytes of pickle."""

    def __call__(self, *args: object) -> None:
        raise pickle.UnpicklingError("it calls numpy.ndarray, which a pickled numpy array never does")


_NDARRAY = _NdarrayType()


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """numpy's `_reconstruct(numpy.ndarray, (0,), 'b')`, the empty array that a pickled array's state then fills,
    as numpy pickles arrays; no other subtype or shape."""
    if subtype is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError(f"it calls numpy's _reconstruct with {_short((subtype, shape))}, not as numpy "
                                     f"pickles an array (numpy.ndarray, (0,))")
    return _numpy_internal("multiarray", "_reconstruct")(np.ndarray, shape, dtype)


@functools.cache
def _safe_globals() -> dict[tuple[str, str], object]:
    """(module, name) -> object for exactly the globals that pickles of numpy arrays, numpy scalars and bytes name,
    under protocols 0-5 written by numpy 1.x (numpy.core) or 2.x (numpy._core), and by Python 2 or 3."""
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): np.dtype,
        ("builtins", "bytes"): _empty_bytes, ("__builtin__", "bytes"): _empty_bytes, ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        for module, name in (("multiarray", "scalar"), ("numeric", "_frombuffer")):
            table[(f"{core}.{module}", name)] = _numpy_internal(module, name)
    return table


class _DataUnpickler(pickle.Unpickler):
    """Unpickles containers, bytes, numpy arrays and numpy scalars only: loading a data file must not run its code."""

    def find_class(self, module: str, name: str) -> object:
        found = _safe_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, not a numpy array or plain container")
        return found


def unpickle(path: Path, keys: tuple[bytes, ...]) -> dict:
    """The dict of a CIFAR pickle (bytes keys), which must hold `keys`."""
    try:
        with open(path, "rb") as f:
            d = _DataUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a corrupt pickle fails in many ways (UnpicklingError, EOFError, ValueError, ...)
        raise PmoeError(f"CIFAR file {path} is not a readable pickle: {type(e).__name__}: {e}") from None
    check(isinstance(d, dict), f"CIFAR file {path} must hold a dict, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    check(not missing, f"CIFAR file {path} lacks key(s) {missing}; it has {sorted(d, key=repr)}")
    return d


def _entries(path: Path, key: bytes, raw: object, what: str) -> list:
    """The entries of d[key], a list, tuple or 1-d numpy array (as Python objects) of `what`."""
    if isinstance(raw, np.ndarray):
        check(raw.ndim == 1, f"CIFAR file {path}: {key!r} must be a 1-d array of {what}, got shape {raw.shape}")
        return raw.tolist()
    check(isinstance(raw, (list, tuple)),
          f"CIFAR file {path}: {key!r} must be a list or 1-d array of {what}, got {type(raw).__name__}")
    return list(raw)


def _class_names(path: Path, key: bytes, raw: object, count: int) -> list[str]:
    """The `count` class names d[key] of a meta file: bytes (as Python 2 pickled them) or str (Python 3)."""
    names = _entries(path, key, raw, "class names")
    bad = next((i for i, n in enumerate(names) if not isinstance(n, (bytes, str))), None)
    if bad is not None:
        raise PmoeError(f"CIFAR file {path}: {key!r} must hold class names as bytes or str, got "
                        f"{type(names[bad]).__name__} {_short(names[bad])} at position {bad}")
    try:
        names = [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as e:
        raise PmoeError(f"CIFAR file {path}: {key!r} holds a class name that is not UTF-8 text: {e}") from None
    check(len(names) == count, f"CIFAR file {path}: {key!r} must list {count} class names, got {len(names)}")
    return names


def _labels(path: Path, key: bytes, raw: object, num_classes: int) -> np.ndarray:
    """Labels d[key] of a batch file as int64 (N,): Python ints, numpy integers or an integer array, each in
    [0, num_classes). Floats, bools, strings and bytes are refused, not truncated."""
    values = _entries(path, key, raw, "integer labels")
    bad = next((i for i, v in enumerate(values) if isinstance(v, (bool, np.bool_))
                or not isinstance(v, (int, np.integer))), None)
    if bad is not None:
        raise PmoeError(f"CIFAR file {path}: {key!r} must hold integer labels, got {type(values[bad]).__name__} "
                        f"{_short(values[bad])} at position {bad}")
    out = next((i for i, v in enumerate(values) if not 0 <= v < num_classes), None)
    if out is not None:
        raise PmoeError(f"CIFAR file {path}: {key!r} must hold labels in [0, {num_classes}) (one per class name), "
                        f"got {values[out]} at position {out}")
    return np.array(values, dtype=np.int64).reshape(-1)


def _batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,) in [0, num_classes)) of one batch file."""
    d = unpickle(path, (b"data", label_key))
    data = d[b"data"]
    check(isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32,
          f"CIFAR file {path}: b'data' must be a numpy array of uint8 rows (N, 3072), got "
          + (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__))
    y = _labels(path, label_key, d[label_key], num_classes)
    check(y.shape == (len(data),), f"CIFAR file {path}: {len(data)} images but {len(y)} labels in {label_key!r}")
    return data.reshape(-1, 3, 32, 32), y


def load_cifar(num_classes: int, data_dir: str | os.PathLike, split: str, coarse: bool = False) -> ImageDataset:
    """Split 'train' | 'test' of CIFAR-`num_classes` (10 | 100) from its folder or the folder above it.

    coarse: CIFAR-100's 20 superclass labels instead of its 100 classes.
    """
    folder_name, train_files, test_file, meta_file, label_key, names_key = _LAYOUT[num_classes]
    count = num_classes
    if coarse:
        check(num_classes == 100, "coarse labels exist for CIFAR-100 only")
        (label_key, names_key), count = _COARSE, 20
    expected = (f"{folder_name}/ with {', '.join(train_files)}, {test_file} and {meta_file}: the 'CIFAR-"
                f"{num_classes} python version' archive of the CIFAR-10 and CIFAR-100 download page (Alex "
                f"Krizhevsky, University of Toronto), unpacked")
    folder = find_folder(data_dir, folder_name, meta_file, expected)
    missing = [f for f in (meta_file, *train_files, test_file) if not (folder / f).is_file()]
    check(not missing, f"CIFAR folder {folder} lacks {', '.join(missing)}; expected {expected}")
    classes = _class_names(folder / meta_file, names_key, unpickle(folder / meta_file, (names_key,))[names_key], count)
    parts = [_batch(folder / f, label_key, count) for f in (train_files if split == "train" else [test_file])]
    images, y = (np.concatenate(a) for a in zip(*parts))
    name = f"cifar{num_classes}"
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(y), classes, *STATS[name],
                        meta={"name": name, "data_dir": str(folder), "split": split, "coarse": coarse})
