"""CIFAR-10 and CIFAR-100, "python version": pickled batches of uint8 rows (N, 3·32·32), in memory."""
from __future__ import annotations

import os
import pickle
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
_SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays only: loading a data file must not run its code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, not a numpy array or plain container")
        return super().find_class(module, name)


def unpickle(path: Path, keys: tuple[bytes, ...]) -> dict:
    """The dict of a CIFAR pickle (bytes keys), which must hold `keys`."""
    try:
        with open(path, "rb") as f:
            d = _DataUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a corrupt pickle fails in many ways (UnpicklingError, EOFError, ValueError, ...)
        raise PmoeError(f"CIFAR file {path} is not a readable pickle: {type(e).__name__}: {e}") from None
    check(isinstance(d, dict), f"CIFAR file {path} must hold a dict, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    check(not missing, f"CIFAR file {path} lacks key(s) {missing}; it has {sorted(d)}")
    return d


def _batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one batch file."""
    d = unpickle(path, (b"data", label_key))
    data, labels = np.asarray(d[b"data"]), np.asarray(d[label_key], dtype=np.int64)
    check(data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32,
          f"CIFAR file {path}: b'data' must be uint8 rows (N, 3072), got {data.dtype} {data.shape}")
    check(labels.shape == (len(data),), f"CIFAR file {path}: {len(data)} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(num_classes: int, data_dir: str | os.PathLike, split: str, coarse: bool = False) -> ImageDataset:
    """Split 'train' | 'test' of CIFAR-`num_classes` (10 | 100) from its folder or the folder above it.

    coarse: CIFAR-100's 20 superclass labels instead of its 100 classes.
    """
    folder_name, train_files, test_file, meta_file, label_key, names_key = _LAYOUT[num_classes]
    if coarse:
        check(num_classes == 100, "coarse labels exist for CIFAR-100 only")
        label_key, names_key = _COARSE
    expected = (f"{folder_name}/ with {', '.join(train_files)}, {test_file} and {meta_file}: the 'CIFAR-"
                f"{num_classes} python version' archive of the CIFAR-10 and CIFAR-100 download page (Alex "
                f"Krizhevsky, University of Toronto), unpacked")
    folder = find_folder(data_dir, folder_name, meta_file, expected)
    missing = [f for f in (meta_file, *train_files, test_file) if not (folder / f).is_file()]
    check(not missing, f"CIFAR folder {folder} lacks {', '.join(missing)}; expected {expected}")
    classes = [n.decode() for n in unpickle(folder / meta_file, (names_key,))[names_key]]
    parts = [_batch(folder / f, label_key) for f in (train_files if split == "train" else [test_file])]
    images, labels = (np.concatenate(a) for a in zip(*parts))
    name = f"cifar{num_classes}"
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, *STATS[name],
                        meta={"name": name, "data_dir": str(folder), "split": split, "coarse": coarse})
