"""ImageFolder trees (ImageNet style): root/<split>/<class>/*.png|jpg, decoded on access."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pmoe.data.vision.dataset import STATS, ImageDataset
from pmoe.data.vision.files import FileImageConfig, ImageFiles, list_images
from pmoe.data.vision.splits import SPLITS, SplitConfig, train_val_test
from pmoe.errors import check


@dataclass
class ImageFolderConfig(FileImageConfig, SplitConfig):
    """root/train/<class>/ images; val and test from root/val/, root/test/ (val held out of train if absent)."""

    image_size: int | None = None  # side of the square images; None = the files' own size (must all agree)


def _subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir())


def load_image_folder(root: str | os.PathLike, split: str, cfg: ImageFolderConfig) -> ImageDataset:
    """Split `split` of the tree at `root`; classes are the sorted subfolders of root/train, for every split."""
    root = Path(root).expanduser()
    expected = "train/<class>/*.png|jpg (and val/<class>/..., test/<class>/... for those splits)"
    check((root / "train").is_dir(), f"ImageFolder root {root} has no train/ folder; expected {expected}")
    classes = _subdirs(root / "train")
    check(classes, f"ImageFolder {root / 'train'} has no class folders; expected {expected}")

    def load(s: str) -> ImageDataset:
        folder = root / s
        check(folder.is_dir(), f"ImageFolder root {root} has no {s}/ folder; expected {expected}")
        unknown = sorted(set(_subdirs(folder)) - set(classes))
        check(not unknown, f"ImageFolder {folder} has class folders {unknown} that train/ lacks")
        per_class = [list_images(folder / c) if (folder / c).is_dir() else [] for c in classes]
        paths = [p for files in per_class for p in files]
        check(paths, f"ImageFolder {folder} holds no image (png, jpg, jpeg, bmp, webp) in its class folders")
        labels = torch.cat([torch.full((len(f),), c) for c, f in enumerate(per_class)])  # (N,) int64
        return ImageDataset(ImageFiles(paths, cfg.image_size, cfg.center_crop), labels, classes, *STATS["imagenet"],
                            meta={"name": "imagefolder", "data_dir": str(root), "split": s,
                                  "image_size": cfg.image_size, "center_crop": cfg.center_crop})

    if not (root / "val").is_dir():
        return train_val_test(load, split, cfg)
    check(split in SPLITS, f"split must be one of {SPLITS}, got {split!r}")
    check(cfg.val_fraction == 0, f"ImageFolder root {root} has its own val/ split: val_fraction must be 0")
    return load(split)
