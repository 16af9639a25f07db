"""ImageFolder trees (ImageNet style): root/<split>/<class>/**/*.png|jpg|..., decoded on access."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pmoe.data.vision.dataset import STATS, ImageDataset
from pmoe.data.vision.files import IMAGE_KINDS, FileImageConfig, ImageFiles, list_images
from pmoe.data.vision.splits import SPLITS, SplitConfig, select_classes, train_val_test
from pmoe.errors import PmoeError, check, os_message

_EXPECTED = (f"train/<class>/ holding image files ({IMAGE_KINDS}; at any depth), and val/<class>/..., "
             "test/<class>/... for those splits")


@dataclass
class ImageFolderConfig(FileImageConfig, SplitConfig):
    """root/train/<class>/ images; val and test from root/val/, root/test/ (see `load_image_folder` when absent)."""

    image_size: int | None = None  # side of the square images; None = the files' own size (must all agree)

    def __post_init__(self) -> None:
        FileImageConfig.__post_init__(self)
        SplitConfig.__post_init__(self)


def _class_folders(folder: Path) -> list[str]:
    """The sorted names of the folders (or links to folders) directly in `folder`, hidden ones ('.*') left out."""
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise PmoeError(f"ImageFolder {folder} cannot be read: {os_message(e)}") from None
    return sorted(d.name for d in entries if not d.name.startswith(".") and d.is_dir())


def _check_tree(root: Path) -> list[str]:
    """The classes of the tree at `root` (the class folders of root/train, 2 or more), once its folders check out."""
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise PmoeError(f"ImageFolder root {root} {state}, so it has no train/ folder; expected {_EXPECTED}")
    check((root / "train").is_dir(), f"ImageFolder root {root} has no train/ folder; expected {_EXPECTED}")
    for s in ("val", "test"):
        check(not (root / s).exists() or (root / s).is_dir(),
              f"ImageFolder {root / s} is a file, not a folder; expected {_EXPECTED}")
    classes = _class_folders(root / "train")
    check(len(classes) >= 2, f"ImageFolder {root / 'train'} has {len(classes)} class folder(s) {classes}; a "
                             f"classifier needs 2 or more; expected {_EXPECTED}")
    return classes


def _load(root: Path, folder_name: str, classes: list[str], cfg: ImageFolderConfig) -> ImageDataset:
    """The images of root/`folder_name`, labelled by `classes`: every class folder that exists must hold an image
    (train/ has them all; val/ and test/ may lack some, never add one)."""
    folder = root / folder_name
    unknown = sorted(set(_class_folders(folder)) - set(classes))
    check(not unknown, f"ImageFolder {folder} has class folders {unknown} that train/ lacks")
    per_class = []
    for c in classes:
        files = list_images(folder / c) if (folder / c).is_dir() else []
        check(files or not (folder / c).is_dir(),
              f"ImageFolder class folder {folder / c} holds no image file ({IMAGE_KINDS}; at any depth)")
        per_class.append(files)
    paths = [p for files in per_class for p in files]
    check(paths, f"ImageFolder {folder} holds no image ({IMAGE_KINDS}) in class folders named as train/'s")
    labels = torch.cat([torch.full((len(f),), c) for c, f in enumerate(per_class)])  # (N,) int64
    return ImageDataset(ImageFiles(paths, cfg.image_size, cfg.center_crop), labels, classes, *STATS["imagenet"],
                        meta={"name": "imagefolder", "data_dir": str(root), "split": folder_name,
                              "folder": folder_name, "image_size": cfg.image_size, "center_crop": cfg.center_crop})


def load_image_folder(root: str | os.PathLike, split: str, cfg: ImageFolderConfig) -> ImageDataset:
    """Split `split` of the tree at `root`; classes are the sorted class folders of root/train, for every split.

    A class folder's images are the files with an image suffix at any depth below it; hidden entries ('.*') are
    left out at every level. The splits, by the folders the root has:
    - val/ and test/: each split is its folder; val_fraction must be 0.
    - test/ only: 'test' is test/; 'val' is held out of train/ (val_fraction > 0), as for formats without one.
    - val/ only (ImageNet style): val/ serves as the 'test' split; 'val' is held out of train/ as above, so the
      test images are never used for choosing the model.
    - neither: 'test' is refused; 'val' is held out of train/ as above.
    `cfg.class_subset` is applied to every split (after the hold-out).
    """
    root = Path(root).expanduser()
    check(split in SPLITS, f"split must be one of {SPLITS}, got {split!r}")
    classes = _check_tree(root)
    has_val, has_test = (root / "val").is_dir(), (root / "test").is_dir()
    if has_val and has_test:
        check(cfg.val_fraction == 0, f"ImageFolder root {root} has its own val/ split: val_fraction must be 0")
        ds = _load(root, split, classes, cfg)
        return select_classes(ds, cfg.class_subset) if cfg.class_subset else ds
    check(split != "test" or has_val or has_test,
          f"ImageFolder root {root} has no test/ folder (nor a val/ folder to serve as the test split); "
          f"expected {_EXPECTED}")
    check(split != "val" or cfg.val_fraction > 0 or not has_val,
          f"ImageFolder root {root} has no test/ folder, so its val/ folder serves as the test split: set "
          "val_fraction > 0 to hold a val split out of train/")
    test_folder = "test" if has_test else "val"
    return train_val_test(lambda s: _load(root, "train" if s == "train" else test_folder, classes, cfg), split, cfg)
