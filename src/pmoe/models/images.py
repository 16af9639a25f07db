"""Image inputs of the vision models: shape checks, central zero-padding to the side a model is built for, and
regions (`patchify`).

Every vision config has `image_size` (the side the model is built for) and `input_size` (the side of the images fed
in; None = image_size). Smaller inputs are zero-padded centrally, e.g. Fashion-MNIST 28x28 into a 32x32 model with
`input_size=28`; anything else is refused with a `PmoeError`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pmoe.errors import check


def check_sizes(image_size: int, input_size: int | None) -> None:
    check(image_size >= 1, f"image_size must be >= 1, got {image_size}")
    check(input_size is None or 1 <= input_size <= image_size,
          f"input_size must be in 1..image_size={image_size} (smaller images are zero-padded), got {input_size}")


def padding(image_size: int, side: int) -> int:
    """Zero rows (and columns) `fit_images` puts before an image of `side` px in a model built for `image_size`."""
    return (image_size - side) // 2


def fit_images(x: Tensor, in_channels: int, image_size: int, input_size: int | None) -> Tensor:
    """x: (B, C, s, s) with s = input_size -> (B, C, image_size, image_size), zero-padded centrally."""
    s = input_size or image_size
    check(x.dim() == 4 and x.shape[1] == in_channels and x.shape[2] == x.shape[3] == s,
          f"images must be (B, {in_channels}, {s}, {s}) (channels, height, width), got shape {tuple(x.shape)}")
    lo, hi = padding(image_size, s), (image_size - s + 1) // 2
    return F.pad(x, (lo, hi, lo, hi)) if image_size > s else x


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, n, C*p*p): the n non-overlapping p x p regions, row-major, each flattened channel-first."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(x: Tensor, p: int, rows: int) -> Tensor:
    """(B, n, C*p*p) -> (B, C, rows*p, (n/rows)*p): the inverse of `patchify`."""
    B, n, D = x.shape
    x = x.reshape(B, rows, n // rows, D // (p * p), p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, rows, p, cols, p)
    return x.reshape(B, D // (p * p), rows * p, (n // rows) * p)
