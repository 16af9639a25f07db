"""Image files decoded on access (Pillow), for data sets too large to hold in memory (CelebA, ImageFolder trees)."""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pmoe.errors import PmoeError, check, os_message

# torchvision's IMG_EXTENSIONS plus .gif (its first frame), matched in any case
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IMAGE_KINDS = ", ".join(s[1:] for s in IMAGE_SUFFIXES)  # for messages: "jpg, jpeg, png, ..."
MAX_IMAGE_SIZE = 4096  # largest side of the square images (image_size, or the files' own size without it)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")  # the pixel count in Pillow's DecompressionBombError


def check_image_size(size: int | None) -> None:
    """Refuse an image_size that is not None nor an int in 1..MAX_IMAGE_SIZE."""
    check(size is None or (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_IMAGE_SIZE),
          f"image_size must be None (the files' own size) or an integer in 1..{MAX_IMAGE_SIZE}, got {size!r}")


@dataclass
class FileImageConfig:
    """How files are decoded to equal-sized images (`ImageFiles`), as a data set option."""

    image_size: int | None = 64  # side of the square images (the paper's CelebA: 64); None = files' own size
    center_crop: bool = True  # crop the centred largest square before resizing (178×218 CelebA -> 178×178)

    def __post_init__(self) -> None:
        check_image_size(self.image_size)


@dataclass(eq=False)
class ImageFiles:
    """N image files, each decoded to RGB uint8 (3, H, W); indexing by an index tensor gives (B, 3, H, W).

    With `size`, each image is first cropped to its centred largest square (`center_crop`) or not (stretched),
    then resized (bilinear, antialiased) to size × size. Without, every file must already have the same size, at
    most MAX_IMAGE_SIZE a side. Decoding is `decode_rgb`'s: every failure is a PmoeError naming the file.
    """

    CHANNELS = 3

    paths: list[str]
    size: int | None = None  # side of the square images after crop and resize; None = the files' own size
    center_crop: bool = True  # with size: crop the centred largest square first, keeping the aspect ratio
    _hw: tuple[int, int] | None = field(default=None, init=False, repr=False)  # (H, W): size², or the first file's

    def __post_init__(self) -> None:
        check_image_size(self.size)
        if self.size is not None:
            self._hw = (self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, 3, H, W)."""
        if self._hw is None:
            self._hw = tuple(self.decode(0).shape[1:]) if self.paths else (0, 0)
            check(max(self._hw) <= MAX_IMAGE_SIZE,
                  f"image file {self.paths[0]} is {self._hw[1]}×{self._hw[0]} (W×H), more than {MAX_IMAGE_SIZE} px "
                  f"a side; resize the images with the data set option image_size=N (--data-opt image_size=N)")
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
              f"{hw[1]}×{hw[0]} (W×H, as its first file); resize them all with the data set option image_size=N "
              f"(--data-opt image_size=N)")
        return img

    def select(self, idx: Tensor) -> ImageFiles:
        """The files picked by int64 indices `idx`, same decoding."""
        out = ImageFiles([self.paths[i] for i in idx.tolist()], self.size, self.center_crop)
        out._hw = self._hw
        return out

    def decode(self, i: int) -> Tensor:
        """File i as uint8 (3, H, W), cropped and resized when `size` is set."""
        im = decode_rgb(self.paths[i])
        if self.size is not None:
            if self.center_crop:
                w, h = im.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side))
            im = im.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def decode_rgb(path: str) -> Image.Image:
    """Image file `path` (its first frame: GIF, animated WebP) as an RGB Pillow image; PmoeError naming the file
    for any failure: missing, unreadable, not an image, corrupt, more pixels than Pillow's MAX_IMAGE_PIXELS
    (its decompression-bomb guard), or pixels without an 8-bit scale (`_to_rgb`)."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # Pillow warns between limit and 2·limit pixels: refused below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if limit is not None and im.width * im.height > limit:
                    raise PmoeError(_too_large(path, im.width * im.height))
                return _to_rgb(im, path)
    except PmoeError:
        raise
    except FileNotFoundError:
        raise PmoeError(f"image file {path} does not exist") from None
    except Image.DecompressionBombError as e:
        m = _BOMB_PIXELS.search(str(e))
        raise PmoeError(_too_large(path, int(m.group(1)) if m else None)) from None
    except OSError as e:
        if e.errno is not None:  # the operating system's (permission, a folder, ...), not Pillow's
            raise PmoeError(f"image file {path} cannot be read: {os_message(e)}") from None
        raise PmoeError(f"image file {path} cannot be decoded as an image: {str(e) or type(e).__name__}") from None
    except Exception as e:  # Pillow raises SyntaxError, ValueError, struct.error, ... for corrupt files
        raise PmoeError(f"image file {path} cannot be decoded as an image: {type(e).__name__}: {e}") from None


def _too_large(path: str, pixels: int | None) -> str:
    """The message for an image of `pixels` pixels (None: unknown, over twice the limit) over MAX_IMAGE_PIXELS."""
    limit = Image.MAX_IMAGE_PIXELS
    count = f"{pixels:,} pixels" if pixels is not None else f"more than {2 * limit:,} pixels"
    return (f"image file {path} is too large: {count}, more than the limit of {limit:,} pixels (Pillow's "
            "MAX_IMAGE_PIXELS, its guard against decompression bombs)")


def _to_rgb(im: Image.Image, path: str) -> Image.Image:
    """`im` as RGB. 16-bit grey (modes I;16*, and mode I, 32-bit, when its values lie in 0..65535, as Pillow opens
    16-bit PGM/PNG) is scaled to 8 bits, value / 257 rounded, before the conversion (Pillow's own would saturate).
    Refused, as no 8-bit scale is sensible without guessing per image: mode I with values outside 0..65535 and
    mode F (32-bit float)."""
    if im.mode == "F":
        raise PmoeError(f"image file {path} has 32-bit float pixels (mode F), which have no standard 8-bit scale; "
                        "expected 8-bit or 16-bit images")
    if im.mode == "I" or im.mode.startswith("I;16"):
        a = np.asarray(im)
        low, high = (int(a.min()), int(a.max())) if a.size else (0, 0)
        check(0 <= low and high <= 65535,
              f"image file {path} has 32-bit integer pixels (mode {im.mode}) in {low}..{high}, outside the 16-bit "
              "range 0..65535 that is scaled to 8 bits; expected 8-bit or 16-bit images")
        im = Image.fromarray(((a.astype(np.uint32) + 128) // 257).astype(np.uint8))  # mode L
    return im.convert("RGB")


def list_images(folder: Path) -> list[str]:
    """The image files (IMAGE_SUFFIXES, any case) at any depth below `folder`, sorted by path.

    Entries whose name starts with '.' (hidden folders, macOS '._*' files) are skipped at every level. Links to
    folders are followed, each real folder visited once (no link loops; a folder's own subfolders before its
    links). PmoeError for an unreadable folder, and for a broken link or something other than a file (a fifo, ...)
    with an image suffix.
    """
    found: list[str] = []
    seen = {os.path.realpath(folder)}

    def fail(e: OSError) -> None:
        raise PmoeError(f"image folder {folder} cannot be read: {os_message(e)}")

    for top, dirs, files in os.walk(folder, followlinks=True, onerror=fail):
        kept = []
        for d in sorted(dirs, key=lambda d: (os.path.islink(os.path.join(top, d)), d)):  # folders before links
            real = os.path.realpath(os.path.join(top, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            path = os.path.join(top, name)
            if not os.path.exists(path):
                link = os.path.islink(path)
                raise PmoeError(f"image file {path} " + (f"is a broken link: its target {os.path.realpath(path)} "
                                                         "does not exist" if link else "does not exist"))
            check(os.path.isfile(path), f"image file {path} is not a regular file (a fifo, a device, ...)")
            found.append(path)
    return sorted(found)


def find_folder(data_dir: str | os.PathLike, subdir: str, marker: str, expected: str) -> Path:
    """`data_dir` if it holds file or folder `marker`, else `data_dir/subdir` if that does; `expected` says what
    the folder should hold and where to get it, for the error."""
    folder = Path(data_dir).expanduser()
    for candidate in (folder, folder / subdir):
        if (candidate / marker).exists():
            return candidate
    raise PmoeError(f"data folder {folder} has no {marker} (nor has {folder / subdir}); expected {expected}")
