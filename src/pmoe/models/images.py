"""Image inputs of the vision models: shape checks and central zero-padding to the side a model is built for.

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


def fit_images(x: Tensor, in_channels: int, image_size: int, input_size: int | None) -> Tensor:
    """x: (B, C, s, s) with s = input_size -> (B, C, image_size, image_size), zero-padded centrally."""
    s = input_size or image_size
    check(x.dim() == 4 and x.shape[1] == in_channels and x.shape[2] == x.shape[3] == s,
          f"images must be (B, {in_channels}, {s}, {s}) (channels, height, width), got shape {tuple(x.shape)}")
    lo, hi = (image_size - s) // 2, (image_size - s + 1) // 2
    return F.pad(x, (lo, hi, lo, hi)) if image_size > s else x
