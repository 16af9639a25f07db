"""CelebA: aligned face JPEGs with 40 binary attributes and the official train/val/test partition."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pmoe.data.vision.dataset import STATS, ImageDataset
from pmoe.data.vision.files import FileImageConfig, ImageFiles, find_folder
from pmoe.errors import PmoeError, check

_PARTITION = {"train": 0, "val": 1, "test": 2}  # list_eval_partition.txt codes
_EXPECTED = ("img_align_celeba/ (the aligned-and-cropped JPEGs), list_attr_celeba.txt and list_eval_partition.txt: "
             "'Align&Cropped Images' and the annotation files of the CelebA page of the Multimedia Laboratory, "
             "The Chinese University of Hong Kong")


@dataclass
class CelebAConfig(FileImageConfig):
    # The label: these attributes as the bits of the class index, first = most significant. One attribute gives
    # a binary label; the default gives the paper's 4 classes smiling × eyeglasses.
    attrs: tuple[str, ...] | str = ("Smiling", "Eyeglasses")

    def __post_init__(self) -> None:
        self.attrs = (self.attrs,) if isinstance(self.attrs, str) else tuple(self.attrs)
        check(len(self.attrs) >= 1, "CelebA attrs must name at least one attribute")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise PmoeError(f"CelebA file {path} does not exist; expected {_EXPECTED}") from None


@functools.lru_cache(maxsize=2)
def read_celeba_annotations(folder: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(file names (N,), attribute names (A,), attributes (N, A) bool, partition (N,) int64 0/1/2 = train/val/test).

    list_attr_celeba.txt: a count line, the A names, then 'file v_1 .. v_A' per image with v = ±1.
    list_eval_partition.txt: 'file p' per image.
    """
    attr_path = Path(folder) / "list_attr_celeba.txt"
    lines = _lines(attr_path)
    check(len(lines) >= 2 and lines[0].strip().isdigit(),
          f"CelebA file {attr_path} must start with a count line and a line of attribute names")
    names, rows = lines[1].split(), [line.split() for line in lines[2:] if line.strip()]
    check(len(rows) == int(lines[0]), f"CelebA file {attr_path} says {lines[0].strip()} images but lists {len(rows)}")
    bad = next((i for i, r in enumerate(rows) if len(r) != len(names) + 1 or not set(r[1:]) <= {"1", "-1"}), None)
    if bad is not None:
        raise PmoeError(f"CelebA file {attr_path}, image row {bad + 1}: expected a file name and {len(names)} values "
                        f"of 1 or -1, got {' '.join(rows[bad])!r}")
    files, values = [r[0] for r in rows], np.array([[v == "1" for v in r[1:]] for r in rows]).reshape(-1, len(names))
    part_path = Path(folder) / "list_eval_partition.txt"
    pairs = [line.split() for line in _lines(part_path) if line.strip()]
    part = {p[0]: p[1] for p in pairs if len(p) == 2}
    missing = next((f for f in files if part.get(f) not in ("0", "1", "2")), None)
    check(missing is None, f"CelebA file {part_path} gives no partition 0, 1 or 2 for {missing}")
    partition = np.array([int(part[f]) for f in files], dtype=np.int64)
    values.flags.writeable = partition.flags.writeable = False  # cached, shared
    return files, names, values, partition


def load_celeba(data_dir: str | os.PathLike, split: str, cfg: CelebAConfig) -> ImageDataset:
    """Split 'train' | 'val' | 'test' of CelebA, decoded on access; every attribute kept in `attributes`."""
    check(split in _PARTITION, f"split must be one of {tuple(_PARTITION)}, got {split!r}")
    folder = find_folder(data_dir, "celeba", "list_attr_celeba.txt", _EXPECTED)
    image_dir = folder / "img_align_celeba"
    image_dir = image_dir / "img_align_celeba" if (image_dir / "img_align_celeba").is_dir() else image_dir  # Kaggle
    check(image_dir.is_dir(), f"CelebA folder {folder} has no img_align_celeba/; expected {_EXPECTED}")
    files, names, values, part = read_celeba_annotations(str(folder))
    unknown = [a for a in cfg.attrs if a not in names]
    check(not unknown, f"unknown CelebA attribute(s) {unknown}; valid: {', '.join(names)}")
    sel = np.flatnonzero(part == _PARTITION[split])
    bits = values[sel][:, [names.index(a) for a in cfg.attrs]]  # (N, k)
    labels = torch.from_numpy(bits @ (1 << np.arange(len(cfg.attrs) - 1, -1, -1)))  # (N,) int64
    classes = [",".join(f"{a}={c >> (len(cfg.attrs) - 1 - i) & 1}" for i, a in enumerate(cfg.attrs))
               for c in range(2 ** len(cfg.attrs))]
    images = ImageFiles([str(image_dir / files[i]) for i in sel], cfg.image_size, cfg.center_crop)
    return ImageDataset(images, labels, classes, *STATS["imagenet"],
                        attributes={n: torch.from_numpy(values[sel, j]) for j, n in enumerate(names)},
                        meta={"name": "celeba", "data_dir": str(folder), "split": split, "attrs": list(cfg.attrs),
                              "image_size": cfg.image_size, "center_crop": cfg.center_crop})
