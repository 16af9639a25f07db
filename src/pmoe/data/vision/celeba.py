"""CelebA: aligned face JPEGs with 40 binary attributes and the official train/val/test partition.

Two layouts are read: the original download (img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt) and
Kaggle's (img_align_celeba/img_align_celeba/, list_attr_celeba.csv, list_eval_partition.csv); a .txt annotation
file is read where it exists, else its .csv.
"""
from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pmoe.data.vision.dataset import STATS, ImageDataset
from pmoe.data.vision.files import FileImageConfig, ImageFiles
from pmoe.errors import PmoeError, check, os_message

_PARTITION = {"train": 0, "val": 1, "test": 2}  # list_eval_partition codes
_ATTR, _PART = "list_attr_celeba", "list_eval_partition"  # annotation files, without their .txt | .csv suffix
_EXPECTED = ("img_align_celeba/ (the aligned-and-cropped JPEGs), list_attr_celeba.txt and list_eval_partition.txt: "
             "'Align&Cropped Images' and the annotation files of the CelebA page of the Multimedia Laboratory, "
             "The Chinese University of Hong Kong; or Kaggle's CelebA: img_align_celeba/img_align_celeba/, "
             "list_attr_celeba.csv and list_eval_partition.csv")

Records = Iterator[tuple[int, list[str]]]  # (line number, fields) of each non-blank line of an annotation file


@dataclass
class CelebAConfig(FileImageConfig):
    # The label: these attributes as the bits of the class index, first = most significant. One attribute gives
    # a binary label; the default gives the paper's 4 classes smiling × eyeglasses.
    attrs: tuple[str, ...] | str = ("Smiling", "Eyeglasses")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attrs = (self.attrs,) if isinstance(self.attrs, str) else tuple(self.attrs)
        check(len(self.attrs) >= 1, "CelebA attrs must name at least one attribute")


def _annotation(folder: Path, stem: str) -> Path:
    """folder/stem.txt (the original download) if it exists, else folder/stem.csv (Kaggle's)."""
    txt = folder / f"{stem}.txt"
    return txt if txt.exists() or not (folder / f"{stem}.csv").exists() else folder / f"{stem}.csv"


def _records(path: Path) -> Records:
    """(line number, fields) of each non-blank line of annotation file `path`: .txt fields are separated by white
    space, .csv fields by commas (unquoted, as Kaggle's)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PmoeError(f"CelebA file {path} does not exist; expected {_EXPECTED}") from None
    except OSError as e:
        raise PmoeError(f"CelebA file {path} cannot be read: {os_message(e)}") from None
    except UnicodeDecodeError as e:
        raise PmoeError(f"CelebA file {path} is not a text file: {e}") from None
    lines = ((n + 1, line) for n, line in enumerate(text.splitlines()) if line.strip())
    if path.suffix == ".txt":
        return ((n, line.split()) for n, line in lines)
    return ((n, [field.strip() for field in line.split(",")]) for n, line in lines)


def _header(path: Path, records: Records) -> list[str]:
    """The fields of the first line of `records`, which must exist."""
    first = next(records, None)
    check(first is not None, f"CelebA file {path} is empty; expected {_EXPECTED}")
    return first[1]


def _attribute_names(path: Path, records: Records) -> tuple[list[str], int | None]:
    """(attribute names, image count or None) from the header lines of list_attr_celeba.txt (a count line, then
    the names) or list_attr_celeba.csv ('image_id,name_1,..'), read off `records`."""
    first = _header(path, records)
    if path.suffix == ".txt":
        second = next(records, None)
        check(len(first) == 1 and re.fullmatch(r"[0-9]+", first[0]) is not None and second is not None,
              f"CelebA file {path} must start with a count line and a line of attribute names")
        count, names = int(first[0]), second[1]
    else:
        check(first[0] == "image_id" and len(first) >= 2, f"CelebA file {path} must start with the header line "
              f"'image_id,<attributes>', got {','.join(first)!r}")
        count, names = None, first[1:]
    dup = next((a for i, a in enumerate(names) if a in names[:i]), None)
    check(dup is None, f"CelebA file {path} must name distinct attributes, got {dup!r} twice")
    return names, count


def _rows(path: Path, records: Records, valid: set[str], width: int, what: str) -> tuple[list[str], list[str]]:
    """(file names, their `width` fields each, flattened) of rows 'file f_1 .. f_width', each f in `valid`
    (`what` says so); refuses a malformed row and a file listed twice."""
    files, fields, seen = [], [], {}
    for n, row in records:
        if len(row) != width + 1 or not valid.issuperset(row[1:]):
            raise PmoeError(f"CelebA file {path}, line {n}: expected a file name and {what}, got {' '.join(row)!r}")
        if row[0] in seen:
            raise PmoeError(f"CelebA file {path} lists image {row[0]} twice (lines {seen[row[0]]} and {n})")
        seen[row[0]] = n
        files.append(row[0])
        fields.extend(row[1:])
    return files, fields


@functools.lru_cache(maxsize=2)
def read_celeba_annotations(folder: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(file names (N,), attribute names (A,), attributes (N, A) bool, partition (N,) int64 0/1/2 = train/val/test).

    list_attr_celeba.txt: a count line, the A names, then 'file v_1 .. v_A' per image with v = ±1.
    list_eval_partition.txt: 'file p' per image. Kaggle's .csv files: the same with a header line (image_id, ...),
    fields separated by commas. Every image must be listed once in each.
    """
    attr_path = _annotation(Path(folder), _ATTR)
    records = _records(attr_path)
    names, count = _attribute_names(attr_path, records)
    files, flat = _rows(attr_path, records, {"1", "-1"}, len(names), f"{len(names)} values of 1 or -1")
    check(count is None or len(files) == count, f"CelebA file {attr_path} says {count} images but lists {len(files)}")
    odd = next((f for f in files if f in (".", "..") or any(c in f for c in "/\\\0")), None)
    check(odd is None, f"CelebA file {attr_path} lists {odd!r}, not the name of a file in img_align_celeba/")
    values = np.fromiter((v == "1" for v in flat), bool, len(flat)).reshape(-1, len(names))
    part_path = _annotation(Path(folder), _PART)
    records = _records(part_path)
    if part_path.suffix == ".csv":
        header = _header(part_path, records)
        check(header == ["image_id", "partition"], f"CelebA file {part_path} must start with the header line "
              f"'image_id,partition', got {','.join(header)!r}")
    part = dict(zip(*_rows(part_path, records, {"0", "1", "2"}, 1, "its partition 0, 1 or 2 (train, val, test)")))
    missing = next((f for f in files if f not in part), None)
    check(missing is None, f"CelebA file {part_path} gives no partition 0, 1 or 2 for {missing}, listed in {attr_path}")
    listed = set(files)
    extra = next((f for f in part if f not in listed), None)
    check(extra is None, f"CelebA file {part_path} lists image {extra}, which {attr_path} does not list")
    partition = np.array([int(part[f]) for f in files], dtype=np.int64)
    values.flags.writeable = partition.flags.writeable = False  # cached, shared
    return files, names, values, partition


def _find_folder(data_dir: str | os.PathLike) -> Path:
    """`data_dir` or `data_dir/celeba`, whichever holds list_attr_celeba.txt or .csv."""
    folder = Path(data_dir).expanduser()
    for candidate in (folder, folder / "celeba"):
        if any((candidate / f"{_ATTR}{suffix}").exists() for suffix in (".txt", ".csv")):
            return candidate
    raise PmoeError(f"data folder {folder} has no {_ATTR}.txt or {_ATTR}.csv (nor has {folder / 'celeba'}); "
                    f"expected {_EXPECTED}")


def _file_problem(path: str) -> str | None:
    """Why image file `path` cannot be used (missing, not a file, empty), from one stat; None if it may be."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return e.strerror or type(e).__name__
    return "not a file" if not stat.S_ISREG(st.st_mode) else "empty" if st.st_size == 0 else None


def _check_files(paths: list[str], split: str, annotations: Path) -> None:
    """Refuse a split with a listed image file that is missing, not a file or empty (a stat each, no decoding)."""
    bad = [(p, why) for p in paths if (why := _file_problem(p)) is not None]
    if bad:
        raise PmoeError(f"CelebA {split} split: {len(bad)} of its {len(paths)} images listed in {annotations} are "
                        f"missing or unusable, e.g. {bad[0][0]} ({bad[0][1]})")


def load_celeba(data_dir: str | os.PathLike, split: str, cfg: CelebAConfig) -> ImageDataset:
    """Split 'train' | 'val' | 'test' of CelebA, decoded on access; every attribute kept in `attributes`.

    `data_dir` (or its celeba/) holds the original download (img_align_celeba/, list_attr_celeba.txt,
    list_eval_partition.txt) or Kaggle's (img_align_celeba/img_align_celeba/, list_attr_celeba.csv,
    list_eval_partition.csv). Every image file of the split must exist when it is loaded; decoding errors show
    when an image is first used.
    """
    check(split in _PARTITION, f"split must be one of {tuple(_PARTITION)}, got {split!r}")
    folder = _find_folder(data_dir)
    image_dir = folder / "img_align_celeba"
    image_dir = image_dir / "img_align_celeba" if (image_dir / "img_align_celeba").is_dir() else image_dir  # Kaggle
    check(image_dir.is_dir(), f"CelebA folder {folder} has no img_align_celeba/; expected {_EXPECTED}")
    files, names, values, part = read_celeba_annotations(str(folder))
    unknown = [a for a in cfg.attrs if a not in names]
    check(not unknown, f"unknown CelebA attribute(s) {unknown}; valid: {', '.join(names)}")
    sel = np.flatnonzero(part == _PARTITION[split])
    paths = [str(image_dir / files[i]) for i in sel]
    _check_files(paths, split, _annotation(folder, _ATTR))
    bits = values[sel][:, [names.index(a) for a in cfg.attrs]]  # (N, k)
    labels = torch.from_numpy(bits @ (1 << np.arange(len(cfg.attrs) - 1, -1, -1)))  # (N,) int64
    classes = [",".join(f"{a}={c >> (len(cfg.attrs) - 1 - i) & 1}" for i, a in enumerate(cfg.attrs))
               for c in range(2 ** len(cfg.attrs))]
    images = ImageFiles(paths, cfg.image_size, cfg.center_crop)
    return ImageDataset(images, labels, classes, *STATS["imagenet"],
                        attributes={n: torch.from_numpy(values[sel, j]) for j, n in enumerate(names)},
                        meta={"name": "celeba", "data_dir": str(folder), "split": split, "attrs": list(cfg.attrs),
                              "image_size": cfg.image_size, "center_crop": cfg.center_crop})
