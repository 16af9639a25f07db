"""MNIST-format (IDX) files: reading, validating, and finding the train/test files of a data folder."""
from __future__ import annotations

import contextlib
import functools
import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pmoe.data.base import machine_memory
from pmoe.errors import PmoeError, check, check_folder
from pmoe.outputs import DATA_ROOT

DEFAULT_DATA_DIR = f"{DATA_ROOT}/fashion-mnist"

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}
_CHUNK = 1 << 24  # bytes read at a time
_HOW_TO_GET = ("'apt-get install dataset-fashion-mnist' puts Fashion-MNIST in " + DEFAULT_DATA_DIR
               + "; or point --data-dir at a folder with MNIST IDX files")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by content), into a native-endian array.

    Reads exactly the bytes its header declares, refused beforehand if more than this machine's memory, so that a
    gzip bomb is never decompressed in full.
    """
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) if gz else contextlib.nullcontext(raw) as f:
                return _read_idx_stream(f, path)
    except FileNotFoundError:
        raise PmoeError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as e:
        raise PmoeError(f"IDX file {path} cannot be read or decompressed: {e}") from None
    except MemoryError:
        raise PmoeError(f"IDX file {path} does not fit in the free memory of this machine") from None


def _read_idx_stream(f: BinaryIO, path: str | os.PathLike) -> np.ndarray:
    """The array of the (decompressed) IDX stream `f` of file `path`: header, then exactly the data it declares."""
    head = f.read(4)
    check(len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_DTYPES and head[3] >= 1,
          f"IDX file {path} has a bad header {head.hex() or '(empty file)'}: expected 00 00, a type byte "
          f"among {', '.join(f'{t:02x}' for t in _IDX_DTYPES)} and a dimension count >= 1")
    dtype, ndim = np.dtype(_IDX_DTYPES[head[2]]), head[3]
    sizes = f.read(4 * ndim)
    check(len(sizes) == 4 * ndim, f"IDX file {path} is truncated inside its {ndim} dimension sizes")
    shape = tuple(int(s) for s in np.frombuffer(sizes, ">u4"))
    header, need, have = 4 + 4 * ndim, math.prod(shape) * dtype.itemsize, machine_memory()
    check(need <= have, f"IDX file {path}: its header {shape} of {dtype.name} declares {need / 2**30:,.1f} GiB of "
          f"data, more than this machine's memory ({have / 2**30:,.1f} GiB); expected an MNIST-format file")
    data = _read_upto(f, need)
    check(len(data) == need, f"IDX file {path} holds {header + len(data)} bytes but its header {shape} of "
          f"{dtype.name} needs {header + need}: truncated")
    check(not f.read(1), f"IDX file {path} holds more than the {header + need} bytes that its header {shape} of "
          f"{dtype.name} needs (trailing bytes): not an IDX file of that shape")
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _read_upto(f: BinaryIO, n: int) -> bytearray:
    """The next `n` bytes of `f` (fewer at its end), read in chunks: a short file takes only the memory of what it
    holds, whatever its header declares."""
    data = bytearray()
    while len(data) < n:
        chunk = f.read(min(_CHUNK, n - len(data)))
        if not chunk:
            break
        data += chunk
    return data


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
