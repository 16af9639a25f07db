"""Train-time augmentation on uint8 image batches: random crop of a zero-padded image and horizontal flip."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pmoe.errors import check


@dataclass
class Augment:
    pad: int = 4  # crop H × W at a random offset of the image zero-padded by `pad` px per side; 0 = no crop
    flip: bool = True  # mirror left-right with probability 1/2

    def __post_init__(self) -> None:
        check(self.pad >= 0, f"augmentation pad must be >= 0, got {self.pad}")


def crop_flip(images: Tensor, pad: int, dy: Tensor, dx: Tensor, flip: Tensor) -> Tensor:
    """Image b of (B, C, H, W): the H × W window at (dy[b], dx[b]) of it zero-padded by `pad`, then mirrored
    left-right where flip[b]. dy, dx: (B,) int64 in [0, 2·pad]; flip: (B,) bool. Same shape and dtype out."""
    B, C, H, W = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad)).flatten(2)  # (B, C, (H + 2 pad) * (W + 2 pad))
    j = torch.arange(W, device=dev)
    rows = dy.to(dev)[:, None] + torch.arange(H, device=dev)  # (B, H)
    cols = dx.to(dev)[:, None] + torch.where(flip.to(dev)[:, None], W - 1 - j, j)  # (B, W)
    flat = (rows[:, :, None] * (W + 2 * pad) + cols[:, None, :]).flatten(1)  # (B, H*W) into the padded image
    return padded.gather(2, flat[:, None].expand(B, C, H * W)).view(B, C, H, W)


def augment_batch(images: Tensor, aug: Augment, gen: torch.Generator) -> Tensor:
    """`images` (B, C, H, W) each with a random crop offset and flip drawn from the CPU generator `gen`."""
    B = images.shape[0]
    dy = torch.randint(2 * aug.pad + 1, (B,), generator=gen)  # (B,)
    dx = torch.randint(2 * aug.pad + 1, (B,), generator=gen)
    flip = torch.rand(B, generator=gen) < 0.5 if aug.flip else torch.zeros(B, dtype=torch.bool)
    return crop_flip(images, aug.pad, dy, dx, flip)
