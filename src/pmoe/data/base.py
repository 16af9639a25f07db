"""The container every pmoe data set shares: samples of `n` patches of dimension `d` with a ±1 label."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from pmoe.errors import check


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_memory(samples: int, n: int, d: int, split: str) -> None:
    """Refuse `samples` samples (of split 'train' | 'test') of n float32 patches of dimension d that would not fit
    this machine's memory."""
    need, have = samples * n * d * 4, machine_memory()
    check(need <= have, f"{samples} {'training' if split == 'train' else 'test'} samples of {n} patches x {d} take "
                        f"{need / 2**30:,.0f} GiB; this machine has {have / 2**30:,.0f} GiB of memory: ask for fewer")


@dataclass
class PatchDataset:
    """Binary patch-classification data: x (N, n, d), y (N,) in {+1, -1}, disc_pos (N,) or None.

    `disc_pos[i]` is the index (0..n-1) of sample i's class-discriminative patch; None where it is unknown (a
    user's file without it: routing hit rates then cannot be measured). `grid` and `patch_shape` say how the n
    patches tile an image (row-major), when they come from one.
    """

    x: torch.Tensor  # (N, n, d) float32 patches
    y: torch.Tensor  # (N,) float32 labels, +1 or -1
    disc_pos: torch.Tensor | None  # (N,) int64 position of the class-discriminative patch, None if unknown
    grid: tuple[int, int] | None = None  # (rows, cols) of the patch grid, rows * cols == n
    patch_shape: tuple[int, ...] | None = None  # shape of one patch, prod == d, e.g. (28, 28)
    meta: dict = field(default_factory=dict)  # how it was made (json-serialisable)

    def __post_init__(self) -> None:
        check(self.x.dim() == 3 and self.x.dtype == torch.float32,
              f"PatchDataset.x must be a float32 tensor (N, n, d), got {self.x.dtype} {tuple(self.x.shape)}")
        N, n, d = self.x.shape
        check(N >= 1 and n >= 1 and d >= 1, f"PatchDataset.x must have N, n, d >= 1, got {tuple(self.x.shape)}")
        check(self.y.shape == (N,) and self.y.dtype == torch.float32,
              f"PatchDataset.y must be a float32 tensor ({N},), got {self.y.dtype} {tuple(self.y.shape)}")
        check(bool(((self.y == 1) | (self.y == -1)).all()), "PatchDataset.y must hold only +1 and -1")
        if self.disc_pos is not None:
            check(self.disc_pos.shape == (N,) and self.disc_pos.dtype == torch.int64,
                  f"PatchDataset.disc_pos must be None or an int64 tensor ({N},), "
                  f"got {self.disc_pos.dtype} {tuple(self.disc_pos.shape)}")
            check(bool(((self.disc_pos >= 0) & (self.disc_pos < n)).all()),
                  f"PatchDataset.disc_pos must lie in [0, {n})")
        if self.grid is not None:
            self.grid = tuple(self.grid)
            check(len(self.grid) == 2 and self.grid[0] * self.grid[1] == n,
                  f"PatchDataset.grid {self.grid} must be (rows, cols) with rows * cols == n == {n}")
        if self.patch_shape is not None:
            self.patch_shape = tuple(self.patch_shape)
            check(math.prod(self.patch_shape) == d,
                  f"PatchDataset.patch_shape {self.patch_shape} must have prod == d == {d}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def n(self) -> int:
        """Patches per sample."""
        return self.x.shape[1]

    @property
    def d(self) -> int:
        """Dimension of one patch."""
        return self.x.shape[2]

    def subset(self, idx: torch.Tensor) -> PatchDataset:
        """The samples picked by `idx` (indices or a boolean mask over N), same grid and meta."""
        disc_pos = None if self.disc_pos is None else self.disc_pos[idx]
        return PatchDataset(self.x[idx], self.y[idx], disc_pos, self.grid, self.patch_shape, dict(self.meta))


def balanced_labels(num_samples: int, gen: torch.Generator) -> torch.Tensor:
    """(N,) float32 labels in random order: ceil(N/2) of +1 and floor(N/2) of -1."""
    y = torch.full((num_samples,), -1.0)
    y[: (num_samples + 1) // 2] = 1.0
    return y[torch.randperm(num_samples, generator=gen)]
