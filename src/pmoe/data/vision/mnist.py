"""MNIST-format (IDX) data sets as images: MNIST, Fashion-MNIST, and the paper's patch canvases."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from pmoe.data.idx import load_idx_dataset
from pmoe.data.patches import PatchCanvasConfig, make_patch_canvas
from pmoe.data.vision.dataset import STATS, ImageDataset
from pmoe.data.vision.splits import SplitConfig
from pmoe.errors import check

CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


def load_idx_images(name: str, data_dir: str | os.PathLike, split: str) -> ImageDataset:
    """Split 'train' | 'test' of MNIST-format data set `name` ('mnist' | 'fashion-mnist'): uint8 (N, 1, 28, 28)."""
    images, labels = load_idx_dataset(data_dir, split)  # (N, H, W), (N,) read-only, cached
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype("int64")),
                        CLASSES[name], *STATS[name], meta={"name": name, "data_dir": str(data_dir), "split": split})


@dataclass
class CanvasImageConfig(PatchCanvasConfig, SplitConfig):
    """The patch canvases of `PatchCanvasConfig` as images, for the vision models."""

    num_samples: int = 1000  # canvases in the split asked for (balanced labels)
    seed: int = 0  # seed of the canvases

    def __post_init__(self) -> None:
        PatchCanvasConfig.__post_init__(self)
        SplitConfig.__post_init__(self)
        check(self.num_samples >= 2, f"num_samples must be >= 2, got {self.num_samples}")


def load_canvas_images(cfg: CanvasImageConfig, split: str) -> ImageDataset:
    """`make_patch_canvas` canvases as uint8 (N, 1, grid·28, grid·28); label 1 for y=+1, 0 for y=-1.

    The attribute 'disc_pos' (N,) holds the grid position (row-major) of each canvas' class patch.
    """
    pd = make_patch_canvas(cfg, split, cfg.num_samples, cfg.seed)  # x (N, n, h*w) in [0, 1]
    (rows, cols), (h, w) = pd.grid, pd.patch_shape
    x = pd.x.reshape(-1, rows, cols, h, w).permute(0, 1, 3, 2, 4).reshape(-1, 1, rows * h, cols * w)  # (N,1,H,W)
    images = x.mul(255).round_().to(torch.uint8)
    plus, minus = cfg.classes
    return ImageDataset(images, (pd.y > 0).long(), [f"class {minus} (y=-1)", f"class {plus} (y=+1)"],
                        *STATS["fashion-mnist"], attributes={"disc_pos": pd.disc_pos},
                        meta={**pd.meta, "name": "fashion-patches-image", **dataclasses.asdict(cfg)})
