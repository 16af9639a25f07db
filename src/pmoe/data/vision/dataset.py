"""The container every image-classification data set shares, and its normalisation constants."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pmoe.data.vision.files import ImageFiles
from pmoe.errors import check

# Per-channel (mean, std) of pixels / 255 over every pixel of the official train split. Fashion-MNIST: computed here
# from the files of `apt-get install dataset-fashion-mnist` (`channel_stats`, checked by the tests; the patch canvases
# built from it have 0.290 / 0.352, close enough to share them). MNIST, CIFAR-10/100: the widely quoted values of the
# same computation. ImageNet: torchvision's, also used for CelebA and ImageFolder trees.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of uint8 images (N, C, H, W) as pixels / 255, over all N·H·W pixels."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255  # (C, N*H*W)
    return tuple(x.mean(1).tolist()), tuple(x.std(1, correction=0).tolist())


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 images (..., C, H, W) -> float32 (pixels / 255 - mean) / std per channel, on the images' device."""
    m = torch.tensor(mean, device=images.device).view(-1, 1, 1)  # (C, 1, 1)
    s = torch.tensor(std, device=images.device).view(-1, 1, 1)
    return (images.float() / 255 - m) / s


@dataclass(eq=False, repr=False)
class ImageDataset(Dataset):
    """Labelled images: uint8 (N, C, H, W) in memory, or files decoded on access, with the same interface.

    `ds[i]` is (normalised float32 (C, H, W), label), without augmentation; `ImageBatches` is the fast way to
    iterate, with augmentation. `attributes` holds further per-sample annotations (CelebA's 40 attributes, a
    canvas' discriminative position, ...); `groups` the group of each sample for worst-group accuracy.
    """

    images: Tensor | ImageFiles  # uint8 (N, C, H, W), or N files decoded to uint8 (C, H, W)
    labels: Tensor  # (N,) int64 in [0, len(classes))
    classes: list[str]  # class names, index = label
    mean: tuple[float, ...]  # per-channel normalisation of pixels / 255 (STATS)
    std: tuple[float, ...]
    groups: Tensor | None = None  # (N,) int64 group of each sample, e.g. label × nuisance attribute
    attributes: dict[str, Tensor] = field(default_factory=dict)  # name -> (N,) per-sample annotation
    meta: dict = field(default_factory=dict)  # how it was made (json-serialisable)

    def __post_init__(self) -> None:
        N = len(self.images)
        if isinstance(self.images, Tensor):
            check(self.images.dim() == 4 and self.images.dtype == torch.uint8,
                  f"ImageDataset.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                  f"{tuple(self.images.shape)}")
        check(self.labels.shape == (N,) and self.labels.dtype == torch.int64,
              f"ImageDataset.labels must be int64 ({N},), got {self.labels.dtype} {tuple(self.labels.shape)}")
        low, high = (int(self.labels.min()), int(self.labels.max())) if N else (0, 0)
        check(0 <= low and high < len(self.classes),
              f"labels of {self._where()} must lie in [0, {len(self.classes)}) (one per class name), got "
              f"{low if low < 0 else high}")
        check(len(self.mean) == len(self.std) == self.channels and min(self.std) > 0,
              f"ImageDataset mean {self.mean} and std {self.std} must have one entry per channel "
              f"({self.channels}), std > 0")
        check(self.groups is None or (self.groups.shape == (N,) and self.groups.dtype == torch.int64),
              f"ImageDataset.groups must be None or int64 ({N},)")
        for name, a in self.attributes.items():
            check(a.shape == (N,), f"ImageDataset attribute {name!r} must have shape ({N},), got {tuple(a.shape)}")

    def _where(self) -> str:
        """The data set, split and folder this is, from `meta`, for messages."""
        m = self.meta
        return " ".join(str(v) for v in (m.get("name", "the image data set"), m.get("split"),
                                         f"in {m['data_dir']}" if m.get("data_dir") else None) if v)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        where = "in memory" if self.in_memory else "files"
        return (f"ImageDataset({self.meta.get('name', '?')} {self.meta.get('split', '')}: {len(self)} images "
                f"{'×'.join(map(str, self.image_shape))} {where}, {self.num_classes} classes"
                f"{', groups' if self.groups is not None else ''})")

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return normalize(self.images[i], self.mean, self.std), int(self.labels[i])

    @property
    def in_memory(self) -> bool:
        """Whether the images are one uint8 tensor (else files decoded on access)."""
        return isinstance(self.images, Tensor)

    @property
    def channels(self) -> int:
        return self.images.shape[1] if self.in_memory else ImageFiles.CHANNELS

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image (a file-backed set without a fixed size decodes its first file)."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx: Tensor) -> ImageDataset:
        """The samples picked by `idx` (int64 indices or a boolean mask over N), in that order."""
        idx = torch.as_tensor(idx)
        idx = idx.nonzero().squeeze(1) if idx.dtype == torch.bool else idx.long()
        images = self.images[idx] if self.in_memory else self.images.select(idx)
        return ImageDataset(images, self.labels[idx], list(self.classes), self.mean, self.std,
                            None if self.groups is None else self.groups[idx],
                            {k: v[idx] for k, v in self.attributes.items()}, dict(self.meta))
