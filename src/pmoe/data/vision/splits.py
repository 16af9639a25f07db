"""Seeded, per-class splits and subsets: the val hold-out of formats without one, and subsets of N samples."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pmoe.data.vision.dataset import ImageDataset
from pmoe.errors import check

SPLITS = ("train", "val", "test")


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from the integers `keys` (e.g. seed, epoch), well mixed by numpy's SeedSequence."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]))


def class_permutations(labels: Tensor, num_classes: int, seed: int) -> list[Tensor]:
    """For each class c < num_classes, the indices of its samples in a seeded random order."""
    gen = seeded_generator(seed)
    return [idx[torch.randperm(len(idx), generator=gen)]
            for idx in (torch.nonzero(labels == c).squeeze(1) for c in range(num_classes))]


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held out) sorted indices; round(fraction · count) of each class is held out, chosen at random."""
    check(0 <= fraction < 1, f"val_fraction must lie in [0, 1), got {fraction}")
    held = torch.cat([p[: round(fraction * len(p))] for p in class_permutations(labels, int(labels.max()) + 1, seed)])
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[held] = True
    return torch.nonzero(~mask).squeeze(1), torch.nonzero(mask).squeeze(1)


def balanced_subset(ds: ImageDataset, num_samples: int, seed: int = 0) -> ImageDataset:
    """`num_samples` samples, num_samples // C of each of the C classes, in data set order.

    The num_samples % C extra ones go to classes drawn at random. For one seed, a smaller subset is contained in
    a larger one (each class' samples are taken from the front of one seeded permutation).
    """
    C = ds.num_classes
    check(1 <= num_samples <= len(ds), f"num_samples must lie in [1, {len(ds)}], got {num_samples}")
    perms = class_permutations(ds.labels, C, seed)
    counts = torch.full((C,), num_samples // C)
    counts[torch.randperm(C, generator=seeded_generator(seed, 1))[: num_samples % C]] += 1
    for c, (p, k) in enumerate(zip(perms, counts.tolist())):
        check(k <= len(p), f"a balanced subset of {num_samples} needs {k} samples of class {ds.classes[c]!r} "
              f"but the data set has {len(p)}")
    return ds.subset(torch.cat([p[:k] for p, k in zip(perms, counts.tolist())]).sort().values)


def select_classes(ds: ImageDataset, classes: tuple[int, ...]) -> ImageDataset:
    """The samples of `classes` (label indices of `ds`), relabelled 0, 1, ... in the order given; the
    normalisation statistics stay those of `ds`."""
    check(len(classes) >= 2 and len(set(classes)) == len(classes)
          and all(isinstance(c, int) and 0 <= c < ds.num_classes for c in classes),
          f"class_subset must be 2 or more distinct label indices in [0, {ds.num_classes}) "
          f"({', '.join(f'{i}: {n}' for i, n in enumerate(ds.classes))}), got {list(classes)}")
    remap = torch.full((ds.num_classes,), -1, dtype=torch.long)
    remap[list(classes)] = torch.arange(len(classes))
    sub = ds.subset(remap[ds.labels] >= 0)
    out = dataclasses.replace(sub, labels=remap[sub.labels], classes=[ds.classes[c] for c in classes])
    out.meta.update(classes=list(classes))
    return out


@dataclass
class SplitConfig:
    """The val split of a format that has none: a stratified, seeded hold-out of its train split; and a subset of
    its classes."""

    # Share of each class of the official train split held out as 'val'. Default 0: 'train' is the whole official
    # train split (as the paper trains) and asking for 'val' is an error; train and val must use the same values.
    val_fraction: float = 0.0
    split_seed: int = 0  # seed of the hold-out
    class_subset: tuple[int, ...] = ()  # keep these classes only, relabelled 0, 1, ... in this order; () = all

    def __post_init__(self) -> None:
        check(0 <= self.val_fraction < 1, f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        self.class_subset = tuple(self.class_subset)  # JSON and the CLI give a list


def train_val_test(load: Callable[[str], ImageDataset], split: str, cfg: SplitConfig) -> ImageDataset:
    """Split `split` of a format whose `load(split)` knows 'train' and 'test' only; 'val' is carved from train
    (before `cfg.class_subset` is selected, so the hold-out does not depend on it)."""
    ds = _split(load, split, cfg)
    return select_classes(ds, cfg.class_subset) if cfg.class_subset else ds


def _split(load: Callable[[str], ImageDataset], split: str, cfg: SplitConfig) -> ImageDataset:
    check(split in SPLITS, f"split must be one of {SPLITS}, got {split!r}")
    if split == "test":
        return load("test")
    check(split == "train" or cfg.val_fraction > 0,
          "this data set has no val split of its own: set val_fraction > 0 to hold one out of its train split")
    ds = load("train")
    if cfg.val_fraction == 0:
        return ds
    kept, held = stratified_split(ds.labels, cfg.val_fraction, cfg.split_seed)
    out = ds.subset(kept if split == "train" else held)
    out.meta.update(split=split, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
    return out
