"""Spurious correlations: a nuisance attribute agrees with the binary label in a set share of each class.

Groups are label × nuisance, group = 2·label + nuisance, for worst-group accuracy. At ratio 0.95 (train) the
groups are 95/5/5/95 of each class, as the paper's CelebA smiling vs hair colour; at 0.5 (test) 50/50.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from pmoe.data.vision.dataset import ImageDataset
from pmoe.data.vision.splits import seeded_generator
from pmoe.errors import check

BinaryFn = Callable[[ImageDataset], Tensor]  # data set -> (N,) int64: 1, 0, or -1 to leave the sample out


def attribute(name: str) -> BinaryFn:
    """Attribute `name` (bool or 0/1) of each sample."""
    return lambda ds: ds.attributes[name].long()


def attribute_contrast(positive: str, negative: str) -> BinaryFn:
    """1 where attribute `positive` holds and `negative` not, 0 for the reverse, -1 (left out) otherwise."""
    return lambda ds: _either(ds.attributes[positive].bool(), ds.attributes[negative].bool())


def class_sets(positive: Sequence[int], negative: Sequence[int]) -> BinaryFn:
    """1 for labels in `positive`, 0 for labels in `negative`, -1 (left out) for the other classes."""
    return lambda ds: _either(torch.isin(ds.labels, torch.tensor(positive)),
                              torch.isin(ds.labels, torch.tensor(negative)))


def _either(pos: Tensor, neg: Tensor) -> Tensor:
    return torch.where(pos & ~neg, 1, torch.where(neg & ~pos, 0, -1))


def stamp_corner(base: ImageDataset, size: int = 4, value: int = 255, seed: int = 0) -> ImageDataset:
    """A copy of in-memory `base` whose images, a seeded random half of them (attribute 'stamp'), carry a
    size × size square of pixel value `value` in the top-left corner, in every channel."""
    check(base.in_memory, "stamp_corner needs an in-memory data set")
    check(1 <= size <= min(base.image_shape[1:]) and 0 <= value <= 255,
          f"stamp size must lie in [1, {min(base.image_shape[1:])}] and value in [0, 255], got {size}, {value}")
    N = len(base)
    stamp = torch.zeros(N, dtype=torch.bool)
    stamp[torch.randperm(N, generator=seeded_generator(seed))[: N // 2]] = True
    images = base.images.clone()
    images[stamp, :, :size, :size] = value
    return ImageDataset(images, base.labels, base.classes, base.mean, base.std, base.groups,
                        {**base.attributes, "stamp": stamp}, {**base.meta, "stamp": [size, value, seed]})


def make_spurious(base: ImageDataset, label_fn: BinaryFn, nuisance_fn: BinaryFn, ratio: float = 0.95,
                  num_samples: int | None = None, seed: int = 0,
                  classes: tuple[str, str] = ("0", "1")) -> ImageDataset:
    """Binary data set from `base`: m samples of each label y, round(ratio·m) of them with nuisance == y.

    m = num_samples / 2, or else the most that `base` allows; a seeded random choice within each group.
    Labels: label_fn; groups (N,) = 2·label + nuisance; attribute 'nuisance'.
    """
    check(0 <= ratio <= 1, f"spurious ratio must lie in [0, 1], got {ratio}")
    y, z = label_fn(base), nuisance_fn(base)  # (N,), (N,) in {1, 0, -1}
    pools = [[torch.nonzero((y == c) & (z == v)).squeeze(1) for v in (c, 1 - c)] for c in (0, 1)]  # agree, not
    per_class = min(_most(len(a), len(d), ratio) for a, d in pools)
    if num_samples is not None:
        check(num_samples % 2 == 0 and 2 <= num_samples <= 2 * per_class,
              f"num_samples must be even, in [2, {2 * per_class}] at ratio {ratio} for this data set, "
              f"got {num_samples}")
        per_class = num_samples // 2
    check(per_class >= 1, f"no sample can be drawn at ratio {ratio}: the groups (label, nuisance) (0, 0), (0, 1), "
          f"(1, 1), (1, 0) hold {[len(p) for pair in pools for p in pair]} samples")
    agree = math.floor(ratio * per_class + 0.5)
    gen = seeded_generator(seed)
    idx = torch.cat([p[torch.randperm(len(p), generator=gen)[:k]]
                     for a, d in pools for p, k in ((a, agree), (d, per_class - agree))]).sort().values
    out = base.subset(idx)
    return dataclasses.replace(out, labels=y[idx], classes=list(classes), groups=2 * y[idx] + z[idx],
                               attributes={**out.attributes, "nuisance": z[idx]},
                               meta={**out.meta, "spurious_ratio": ratio, "spurious_seed": seed})


def _most(n_agree: int, n_disagree: int, ratio: float) -> int:
    """The largest m with round(ratio·m) <= n_agree and m - round(ratio·m) <= n_disagree."""
    m = min(n_agree + n_disagree, math.floor(n_agree / ratio) + 1 if ratio > 0 else n_disagree,
            math.floor(n_disagree / (1 - ratio)) + 1 if ratio < 1 else n_agree)
    while math.floor(ratio * m + 0.5) > n_agree or m - math.floor(ratio * m + 0.5) > n_disagree:
        m -= 1
    return m
