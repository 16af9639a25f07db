"""The paper's MNIST patch-canvas task on any MNIST-format data set (Fashion-MNIST by default).

A sample is a grid × grid canvas of 28×28 images: one, at a random position, shows class classes[0] (y=+1) or
classes[1] (y=-1); every other one shows a random image of the remaining classes, which carries no label
information. Train canvases use only the train split's images, test canvases only the test split's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from pmoe.data.base import PatchDataset, balanced_labels, check_fits_memory
from pmoe.data.idx import DEFAULT_DATA_DIR, load_idx_dataset
from pmoe.errors import check


@dataclass
class PatchCanvasConfig:
    grid: int = 4  # grid × grid patches per canvas (n = grid²), each one image (d = 784 for 28×28)
    # Class of y=+1 and of y=-1: Fashion-MNIST 1 (trouser) vs 9 (ankle boot). Like the paper's MNIST digits, two
    # shapes unlike each other and unlike most of the rest, so routers can single them out: the linear router
    # mean(trouser) - mean(boot) puts the class patch in its top 2 of 16 for ~90% of test canvases of either class
    # (best of all 45 pairs; chance is 12.5%). Dresses, sneakers and sandals, among the label-irrelevant patches,
    # still resemble them, as the theory's irrelevant patterns may.
    classes: tuple[int, int] = (1, 9)
    data_dir: str = DEFAULT_DATA_DIR  # folder of MNIST-format IDX files

    def __post_init__(self) -> None:
        check(isinstance(self.grid, int) and self.grid >= 1, f"canvas grid must be an integer >= 1, got {self.grid}")
        check(isinstance(self.classes, (tuple, list)) and len(self.classes) == 2,
              f"canvas classes must be a pair (class of y=+1, class of y=-1), got {self.classes!r}")
        self.classes = (int(self.classes[0]), int(self.classes[1]))
        check(self.classes[0] != self.classes[1], f"canvas classes must be distinct, got {self.classes}")


def make_patch_canvas(cfg: PatchCanvasConfig, split: str, num_samples: int, seed: int) -> PatchDataset:
    """`num_samples` balanced canvases from `split` ('train' | 'test'); x (N, grid², H*W) = pixels / 255."""
    check(num_samples >= 2, f"num_samples must be >= 2 (one per class at least), got {num_samples}")
    images, labels = load_idx_dataset(cfg.data_dir, split)  # (M, H, W), (M,)
    pools = [np.flatnonzero(labels == c) for c in cfg.classes]
    for c, pool in zip(cfg.classes, pools):
        check(len(pool) > 0, f"class {c} has no image in the {split} split of {cfg.data_dir} "
              f"(its classes: {np.unique(labels).tolist()})")
    irrelevant = np.flatnonzero(~np.isin(labels, cfg.classes))
    check(len(irrelevant) > 0,
          f"the {split} split of {cfg.data_dir} has no image outside classes {cfg.classes} to fill the canvas")

    gen = torch.Generator().manual_seed(seed)
    N, n = num_samples, cfg.grid * cfg.grid
    check_fits_memory(N, n, images[0].size, split)
    y = balanced_labels(N, gen)  # (N,)
    disc_pos = torch.randint(n, (N,), generator=gen)  # (N,)
    disc_img = [torch.from_numpy(p)[torch.randint(len(p), (N,), generator=gen)] for p in pools]  # 2 × (N,)
    img = torch.from_numpy(irrelevant)[torch.randint(len(irrelevant), (N, n), generator=gen)]  # (N, n)
    img[torch.arange(N), disc_pos] = torch.where(y > 0, disc_img[0], disc_img[1])
    x = torch.from_numpy(images[img.numpy()]).reshape(N, n, -1).float().div_(255)  # (N, n, H*W)
    meta = {"name": "fashion-patches", **dataclasses.asdict(cfg), "split": split, "num_samples": N, "seed": seed}
    return PatchDataset(x, y, disc_pos, grid=(cfg.grid, cfg.grid), patch_shape=images.shape[1:], meta=meta)


def canvas_image(ds: PatchDataset, i: int) -> torch.Tensor:
    """Sample i reassembled as one image (rows * H, cols * W), for plots."""
    check(ds.grid is not None and ds.patch_shape is not None and len(ds.patch_shape) == 2,
          "canvas_image needs a data set of image patches (grid and 2-D patch_shape set)")
    (rows, cols), (h, w) = ds.grid, ds.patch_shape
    return ds.x[i].reshape(rows, cols, h, w).permute(0, 2, 1, 3).reshape(rows * h, cols * w)
