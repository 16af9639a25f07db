"""Image files decoded on access (Pillow), for data sets too large to hold in memory (CelebA, ImageFolder trees)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from pmoe.errors import PmoeError, check

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class FileImageConfig:
    """How files are decoded to equal-sized images (`ImageFiles`), as a data set option."""

    image_size: int | None = 64  # side of the square images (the paper's CelebA: 64); None = files' own size
    center_crop: bool = True  # crop the centred largest square before resizing (178×218 CelebA -> 178×178)


@dataclass(eq=False)
class ImageFiles:
    """N image files, each decoded to RGB uint8 (3, H, W); indexing by an index tensor gives (B, 3, H, W).

    With `size`, each image is first cropped to its centred largest square (`center_crop`) or not (stretched),
    then resized (bilinear, antialiased) to size × size. Without, every file must already have the same size.
    """

    CHANNELS = 3

    paths: list[str]
    size: int | None = None  # side of the square images after crop and resize; None = the files' own size
    center_crop: bool = True  # with size: crop the centred largest square first, keeping the aspect ratio
    _hw: tuple[int, int] | None = field(default=None, init=False, repr=False)  # (H, W): size², or the first file's

    def __post_init__(self) -> None:
        check(self.size is None or self.size >= 1, f"image size must be None or >= 1, got {self.size}")
        if self.size is not None:
            self._hw = (self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, 3, H, W)."""
        if self._hw is None:
            self._hw = tuple(self.decode(0).shape[1:]) if self.paths else (0, 0)
        return (len(self.paths), self.CHANNELS, *self._hw)

    def __getitem__(self, idx: int | Tensor) -> Tensor:
        """Image idx (3, H, W), or the images of an index tensor (B, 3, H, W)."""
        if isinstance(idx, Tensor) and idx.dim() == 1:
            if len(idx) == 0:
                return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
            return torch.stack([self[int(i)] for i in idx])
        img, hw = self.decode(int(idx)), self.shape[2:]
        check(tuple(img.shape[1:]) == hw,
              f"image file {self.paths[int(idx)]} is {img.shape[2]}×{img.shape[1]} but the data set's images are "
              f"{hw[1]}×{hw[0]} (W×H, as its first file); give an image size to resize them all")
        return img

    def select(self, idx: Tensor) -> ImageFiles:
        """The files picked by int64 indices `idx`, same decoding."""
        out = ImageFiles([self.paths[i] for i in idx.tolist()], self.size, self.center_crop)
        out._hw = self._hw
        return out

    def decode(self, i: int) -> Tensor:
        """File i as uint8 (3, H, W), cropped and resized when `size` is set."""
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except FileNotFoundError:
            raise PmoeError(f"image file {path} does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            raise PmoeError(f"image file {path} cannot be decoded as an image: {e}") from None
        if self.size is not None:
            if self.center_crop:
                w, h = im.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side))
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def list_images(folder: Path) -> list[str]:
    """The image files (png, jpg, jpeg, bmp, webp; any case) directly inside `folder`, sorted by name."""
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


def find_folder(data_dir: str | os.PathLike, subdir: str, marker: str, expected: str) -> Path:
    """`data_dir` if it holds file or folder `marker`, else `data_dir/subdir` if that does; `expected` says what
    the folder should hold and where to get it, for the error."""
    folder = Path(data_dir).expanduser()
    for candidate in (folder, folder / subdir):
        if (candidate / marker).exists():
            return candidate
    raise PmoeError(f"data folder {folder} has no {marker} (nor has {folder / subdir}); expected {expected}")
