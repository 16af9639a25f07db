"""Theory data from a user's numpy .npz file (`--data file:PATH.npz`), pinned by its SHA-256.

The format, read with allow_pickle=False (nothing in a file is ever executed):
  x         (N, n, d) float    samples already cut into n patches of dimension d; or instead
  images    (N, H, W) float    whole images, cut by `grid` into n = rows·cols patches of (H/rows)×(W/cols)
  grid      (2,) int           (rows, cols), with `images` only; rows must divide H and cols W; patch j is the
                               cell (j // cols, j % cols), row-major (d = H·W / n)
  y         (N,) int or float  labels +1 or -1 ({0, 1} labels are refused: save 2·y − 1)
  disc_pos  (N,) int           optional: the patch index (0..n-1) of each sample's class-discriminative patch;
                               routing hit rates (`pmoe route`) need it, training and evaluation do not
Float arrays must be finite and are used as float32; uint8 `x` or `images` are pixels and are divided by 255, as
the built-in canvases are. A file holds one split under these keys, or two under the keys suffixed `_train` and
`_test` (x_train, y_train, disc_pos_train, x_test, ...; one unsuffixed grid for both).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pmoe.data.base import PatchDataset, machine_memory
from pmoe.data.patches import canvas_image
from pmoe.data.vision.splits import class_permutations
from pmoe.errors import PmoeError, check
from pmoe.io import atomic_path

FILE_PREFIX = "file:"  # --data file:PATH.npz
_KEYS = ("x", "images", "y", "disc_pos")  # the arrays of one split
_SUFFIX = {"train": "_train", "test": "_test"}
_KNOWN = {"grid"} | {k + s for k in _KEYS for s in ("", "_train", "_test")}  # every array name a file may hold
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# what numpy and zipfile raise on a member they cannot read (corrupt, truncated, encrypted, unknown compression, ...)
_READ_ERRORS = (ValueError, TypeError, OverflowError, OSError, EOFError, RuntimeError, NotImplementedError,
                MemoryError, zipfile.BadZipFile, zlib.error)


@dataclass
class PatchFileConfig:
    path: str = ""  # .npz file of the training split, and of the test split too unless test_path is given
    sha256: str = ""  # of `path` when the run was made (DataSpec.from_file records it); a changed file is refused
    test_path: str | None = None  # a separate .npz file of the test split
    test_sha256: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.path and self.sha256), "file data needs the options path and sha256; make the spec with "
              "pmoe.runs.DataSpec.from_file(path), which records the file's SHA-256")
        check(self.test_path is None or self.test_sha256 is not None, "file data with a test_path needs test_sha256")


def file_options(path: str | os.PathLike, test_path: str | os.PathLike | None = None) -> dict:
    """The options of a PatchFileConfig: the absolute paths of the file(s) and their SHA-256 now."""
    opts = {"path": str(Path(path).resolve()), "sha256": hashlib.sha256(_read(path)).hexdigest()}
    if test_path is not None:
        opts.update(test_path=str(Path(test_path).resolve()), test_sha256=hashlib.sha256(_read(test_path)).hexdigest())
    return opts


def load_patch_file(cfg: PatchFileConfig, split: str, num_samples: int | None, seed: int) -> PatchDataset:
    """Split 'train' | 'test' of the file(s) of `cfg`: all samples, or a seeded class-balanced subset of
    `num_samples` (as balanced as the file allows), kept in file order."""
    separate = split == "test" and cfg.test_path is not None
    path, sha = (cfg.test_path, cfg.test_sha256) if separate else (cfg.path, cfg.sha256)
    arrays = _open(path, sha)
    suffix = _split_suffix(arrays, path, split, cfg.test_path is not None)
    ds = _dataset(arrays, path, suffix)
    ds.meta = {"name": "file", "path": path, "sha256": sha, "split": split, "source": f"{path} (x|images{suffix})",
               "num_samples": len(ds), "seed": seed}
    if num_samples is None:
        return ds
    check(2 <= num_samples <= len(ds), f"data file {path} holds {len(ds)} {split} samples (y{suffix}); asked for "
          f"{num_samples} (give 2..{len(ds)}, or leave the count out for all)")
    pos, neg = class_permutations((ds.y < 0).long(), 2, seed)  # indices of y=+1, of y=-1, each in a seeded order
    k = min(len(pos), max((num_samples + 1) // 2, num_samples - len(neg)))  # ceil(N/2) of +1 where both suffice
    sub = ds.subset(torch.cat([pos[:k], neg[:num_samples - k]]).sort().values)
    sub.meta["num_samples"] = num_samples
    return sub


def save_patch_file(path: str | Path, train: PatchDataset, test: PatchDataset | None = None,
                    overwrite: bool = False) -> Path:
    """Write `train` (one split) or `train` and `test` (keys suffixed _train, _test) in the format above, atomically.

    Data sets of image patches (all with the same grid and a 2-D patch_shape) are saved as images + grid, so that
    `pmoe route --png` can draw them; others as x. Refuses to replace an existing file unless `overwrite`.
    """
    path = Path(path)
    check(not path.is_dir(), f"{path} is a folder; give a file name such as data.npz")
    check(overwrite or not path.exists(), f"{path} exists; pass overwrite=True to replace it")
    splits = {"": train} if test is None else {"_train": train, "_test": test}
    grids = {ds.grid for ds in splits.values()}
    as_images = len(grids) == 1 and None not in grids and all(
        ds.patch_shape is not None and len(ds.patch_shape) == 2 for ds in splits.values())
    arrays = {"grid": np.array(train.grid)} if as_images else {}
    for suffix, ds in splits.items():
        if as_images:
            arrays["images" + suffix] = torch.stack([canvas_image(ds, i) for i in range(len(ds))]).numpy()
        else:
            arrays["x" + suffix] = ds.x.numpy()
        arrays["y" + suffix] = ds.y.numpy().astype(np.int8)
        if ds.disc_pos is not None:
            arrays["disc_pos" + suffix] = ds.disc_pos.numpy()
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def _read(path: str | os.PathLike, recorded: str | None = None) -> bytes:
    """The bytes of data file `path`; `recorded`: the SHA-256 a run recorded of it, for the error if it is gone."""
    p = Path(path)
    if not p.exists():
        raise PmoeError(f"data file {path} does not exist" + (
            f"; the run recorded it with sha256 {recorded}: has it been moved or deleted?" if recorded else ""))
    check(p.is_file(), f"data file {path} is not a file; expected a numpy .npz archive")
    try:
        size = p.stat().st_size
        check(size <= machine_memory(), f"data file {path} takes {_gib(size)}, more than this machine's memory "
              f"({_gib(machine_memory())})")
        return p.read_bytes()
    except OSError as e:
        raise PmoeError(f"data file {path} cannot be read: {e}") from None
    except MemoryError:
        raise PmoeError(f"data file {path} ({_gib(size)}) does not fit in the free memory of this machine") from None


def _gib(nbytes: int) -> str:
    """`nbytes` for a message: '12,345 bytes' or '3.2 GiB'."""
    return f"{nbytes:,} bytes" if nbytes < 2**30 else f"{nbytes / 2**30:,.1f} GiB"


def _open(path: str, sha256: str) -> dict[str, np.ndarray]:
    """The arrays of data file `path`, whose content must still have SHA-256 `sha256`.

    Every member's .npy header is read and checked first (a known array name, a declared size that the member's
    bytes hold and that, with the other members, fits this machine's memory); only then is any array read.
    """
    raw = _read(path, sha256)
    now = hashlib.sha256(raw).hexdigest()
    check(now == sha256, f"data file {path} has changed since the run recorded it: sha256 now {now}, recorded "
          f"{sha256}; restore the file, or train again on the new one")
    try:
        npz = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise PmoeError(f"data file {path} is not a numpy .npz archive ({e})") from None
    check(isinstance(npz, np.lib.npyio.NpzFile),
          f"data file {path} is a single .npy array; expected an .npz archive of named arrays (x or images, y, ...)")
    with npz:
        members = _members(npz.zip, path)
        sizes = {key: _check_member(npz.zip, info, key, path) for key, info in members.items()}
        total = sum(sizes.values())
        check(total <= machine_memory(), f"data file {path} declares arrays of {_gib(total)} in all "
              f"({', '.join(f'{k} {_gib(v)}' for k, v in sizes.items())}), more than this machine's memory "
              f"({_gib(machine_memory())})")
        return {key: _read_member(npz.zip, info, key, path) for key, info in members.items()}


def _members(zf: zipfile.ZipFile, path: str) -> dict[str, zipfile.ZipInfo]:
    """The zip members of data file `path` by array name (the member's name less .npy, as numpy names them); names
    must be known and given once."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        key = info.filename.removesuffix(".npy")
        if key in members:
            raise PmoeError(f"data file {path} has two zip members for array {key!r}: {members[key].filename!r} "
                            f"and {info.filename!r}; expected one")
        members[key] = info
    unknown = sorted(set(members) - _KNOWN)
    check(not unknown, f"data file {path} has unexpected array(s) {unknown}; expected x or images (+ grid), y and "
          f"optionally disc_pos, either as they are (one split) or suffixed _train and _test (two splits)")
    return members


def _member_error(path: str, key: str, info: zipfile.ZipInfo, why: str) -> PmoeError:
    """The error for array `key` of data file `path`, zip member `info`, that cannot be read because `why`."""
    return PmoeError(f"data file {path}: array {key!r} cannot be read from zip member {info.filename!r}: {why}")


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, path: str) -> int:
    """The bytes of data that zip member `info` (array `key`) declares in its .npy header, checked, without reading
    them, to be numbers (no pickled objects), present in full and within this machine's memory."""
    try:
        with zf.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                raise _member_error(path, key, info, "it is not a .npy array (no \\x93NUMPY header); expected "
                                    "numpy arrays saved with np.savez") from None
            if version not in _NPY_HEADERS:
                raise _member_error(path, key, info, f".npy format version {version[0]}.{version[1]} is not "
                                    f"supported (1.0 or 2.0 are)")
            shape, _, dtype = _NPY_HEADERS[version](f)
            header = f.tell()
    except PmoeError:
        raise
    except _READ_ERRORS as e:
        raise _member_error(path, key, info, f"bad .npy header ({e})") from None
    if dtype.hasobject:
        raise _member_error(path, key, info, f"it holds Python objects ({dtype}), which are never unpickled; "
                            f"expected an array of numbers")
    if any(s < 0 for s in shape):
        raise _member_error(path, key, info, f"its .npy header declares the negative shape {shape}")
    need, have = math.prod(shape) * dtype.itemsize, info.file_size - header
    declared = f"its .npy header declares shape {shape} of {dtype} ({_gib(need)})"
    if need != have:
        raise _member_error(path, key, info, f"{declared} but it holds {_gib(max(have, 0))} of data: "
                            + ("truncated" if have < need else "trailing bytes"))
    if need > machine_memory():
        raise _member_error(path, key, info, f"{declared}, more than this machine's memory "
                            f"({_gib(machine_memory())})")
    return need


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, path: str) -> np.ndarray:
    """The array of zip member `info` (array `key`), whose header _check_member has checked."""
    try:
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except MemoryError:
        raise _member_error(path, key, info, "it does not fit in the free memory of this machine") from None
    except _READ_ERRORS as e:
        raise _member_error(path, key, info, str(e) or type(e).__name__) from None


def _split_suffix(arrays: dict[str, np.ndarray], path: str, split: str, separate_test: bool) -> str:
    """'' when `path` is a one-split file used for one split, else the suffix of `split`'s keys."""
    one, two = any(k in _KEYS for k in arrays), any(k.endswith(("_train", "_test")) for k in arrays)
    check(not (one and two), f"data file {path} mixes unsuffixed arrays (one split) with _train/_test ones (two "
          f"splits): {sorted(arrays)}")
    if two:
        suffix = _SUFFIX[split]
        check(any(k.endswith(suffix) for k in arrays), f"data file {path} has no {split} split: expected "
              f"x{suffix} or images{suffix}, and y{suffix}" + (", or give --test-data file:TEST.npz"
                                                               if split == "test" else ""))
        return suffix
    check(separate_test,
          f"data file {path} holds one split (arrays {sorted(arrays)}) and no test split: give the test samples with "
          f"--test-data file:TEST.npz, or save x_train, y_train, x_test, y_test (each optionally with disc_pos_*) "
          f"in one file")
    return ""


def _dataset(arrays: dict[str, np.ndarray], path: str, suffix: str) -> PatchDataset:
    """The PatchDataset of the arrays with keys ending in `suffix` (and the shared grid), validated."""
    x_key, img_key, y_key, pos_key = (k + suffix for k in _KEYS)
    check((x_key in arrays) != (img_key in arrays), f"data file {path} needs exactly one of {x_key} (N, n, d) patches "
          f"or {img_key} (N, H, W) images with a grid; it has arrays {sorted(arrays)}")
    check(y_key in arrays, f"data file {path} has no {y_key}: expected labels (N,) of +1 and -1")
    if x_key in arrays:
        check("grid" not in arrays, f"data file {path}: grid applies to {img_key} only ({x_key} is cut into patches)")
        x, patch_shape, grid = _pixels(arrays[x_key], path, x_key, "(N, n, d)"), None, None
    else:
        images = _pixels(arrays[img_key], path, img_key, "(N, H, W)")
        N, H, W = images.shape
        rows, cols = grid = _grid(arrays, path, img_key, (H, W))
        h, w = patch_shape = H // rows, W // cols
        x = images.reshape(N, rows, h, cols, w).transpose(0, 1, 3, 2, 4).reshape(N, rows * cols, h * w)
    N, n, _ = x.shape
    y = arrays[y_key]
    check(y.shape == (N,) and y.dtype.kind in "iuf", f"data file {path}: {y_key} must be an int or float array "
          f"({N},), one label per sample, got {y.dtype} {y.shape}")
    values = np.unique(y)
    check(set(values.tolist()) <= {1, -1}, f"data file {path}: {y_key} must hold only +1 and -1, found "
          f"{values[:6].tolist()}" + ("; for 0/1 labels save 2*y - 1 (1 -> +1, 0 -> -1)"
                                      if set(values.tolist()) <= {0, 1} else ""))
    pos = arrays.get(pos_key)
    if pos is not None:
        check(pos.shape == (N,) and pos.dtype.kind in "iu", f"data file {path}: {pos_key} must be an int array "
              f"({N},), one patch index per sample, got {pos.dtype} {pos.shape}")
        bad = np.flatnonzero((pos < 0) | (pos >= n))
        check(len(bad) == 0, f"data file {path}: {pos_key} must lie in [0, {n}) (n = {n} patches), sample "
              f"{bad[:1].tolist()} has {pos[bad[:1]].tolist()}")
    return PatchDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)),
                        None if pos is None else torch.from_numpy(pos.astype(np.int64)), grid, patch_shape)


def _pixels(a: np.ndarray, path: str, key: str, shape: str) -> np.ndarray:
    """`a` as finite float32 with 3 dimensions of size >= 1; uint8 pixels / 255."""
    check(a.ndim == 3 and min(a.shape) >= 1, f"data file {path}: {key} must have shape {shape}, got {a.shape}")
    check(a.dtype == np.uint8 or a.dtype.kind == "f",
          f"data file {path}: {key} must be a float array (or uint8 pixels), got {a.dtype}")
    out = a.astype(np.float32) / 255 if a.dtype == np.uint8 else a.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=(1, 2)))
    check(len(bad) == 0, f"data file {path}: {key} must be finite (as float32), sample(s) {bad[:5].tolist()} hold "
          f"NaN or Inf")
    return out


def _grid(arrays: dict[str, np.ndarray], path: str, key: str, hw: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) of the file's grid, which must tile images of size `hw`."""
    check("grid" in arrays, f"data file {path}: {key} needs a grid, (rows, cols), that cuts the images into patches")
    g = arrays["grid"]
    check(g.shape == (2,) and g.dtype.kind in "iu" and (g >= 1).all(), f"data file {path}: grid must be two ints "
          f">= 1 (rows, cols), got {g.dtype} {g.tolist()}")
    rows, cols = int(g[0]), int(g[1])
    check(hw[0] % rows == 0 and hw[1] % cols == 0, f"data file {path}: grid ({rows}, {cols}) does not tile the "
          f"{hw[0]}x{hw[1]} {key}: rows must divide H={hw[0]} and cols W={hw[1]}")
    return rows, cols
