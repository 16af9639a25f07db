"""MNIST-format (IDX) files: reading, validating, and finding the train/test files of a data folder."""
from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from pmoe.errors import PmoeError, check, check_folder
from pmoe.outputs import DATA_ROOT

DEFAULT_DATA_DIR = f"{DATA_ROOT}/fashion-mnist"

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}
_HOW_TO_GET = ("'apt-get install dataset-fashion-mnist' puts Fashion-MNIST in " + DEFAULT_DATA_DIR
               + "; or point --data-dir at a folder with MNIST IDX files")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by content), into a native-endian array."""
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise PmoeError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as e:
        raise PmoeError(f"IDX file {path} cannot be read or decompressed: {e}") from None
    check(len(raw) >= 4 and raw[:2] == b"\0\0" and raw[2] in _IDX_DTYPES and raw[3] >= 1,
          f"IDX file {path} has a bad header {raw[:4].hex() or '(empty file)'}: expected 00 00, a type byte "
          f"among {', '.join(f'{t:02x}' for t in _IDX_DTYPES)} and a dimension count >= 1")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    check(len(raw) >= 4 + 4 * ndim, f"IDX file {path} is truncated inside its {ndim} dimension sizes")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + math.prod(shape) * dtype.itemsize
    check(len(raw) == expected, f"IDX file {path} holds {len(raw)} bytes but its header {shape} of {dtype.name} "
          f"needs {expected}: {'truncated' if len(raw) < expected else 'trailing bytes'}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _expected_files() -> str:
    """The names of the four files of an MNIST-format folder."""
    return ", ".join(f"{p}-{kind}[.gz]" for p in _PREFIX.values()
                     for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def _find(folder: Path, stem: str) -> Path:
    """The file of `folder` named `stem` ('train-images-idx3-ubyte' or its '.idx3-ubyte' variant), raw or .gz."""
    variant = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", variant, variant + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise PmoeError(f"data folder {folder} has no {stem}[.gz] (nor {variant}[.gz]); "
                    f"it needs the MNIST-format files {_expected_files()}. {_HOW_TO_GET}")


def load_idx_dataset(data_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, labels (N,) uint8) of split 'train' or 'test' of an MNIST-format folder.

    Cached in-process per folder and split; the arrays are read-only.
    """
    check(split in _PREFIX, f"split must be one of {tuple(_PREFIX)}, got {split!r}")
    return _load_cached(str(Path(data_dir).expanduser().resolve()), split)


@functools.lru_cache(maxsize=8)
def _load_cached(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    check_folder(folder, "data folder", f"it should hold the MNIST-format files {_expected_files()}. {_HOW_TO_GET}")
    image_path = _find(Path(folder), f"{_PREFIX[split]}-images-idx3-ubyte")
    label_path = _find(Path(folder), f"{_PREFIX[split]}-labels-idx1-ubyte")
    images, labels = read_idx(image_path), read_idx(label_path)
    check(images.ndim == 3 and images.dtype == np.uint8,
          f"IDX file {image_path} must hold uint8 images (N, H, W), got {images.dtype} {images.shape}")
    check(labels.ndim == 1 and labels.dtype == np.uint8,
          f"IDX file {label_path} must hold uint8 labels (N,), got {labels.dtype} {labels.shape}")
    check(len(images) == len(labels),
          f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    images.flags.writeable = labels.flags.writeable = False
    return images, labels
