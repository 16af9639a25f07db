"""Batches of normalised images: indexing for in-memory sets, DataLoader workers for file-backed ones."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pmoe.data.vision.augment import Augment, augment_batch
from pmoe.data.vision.dataset import ImageDataset, normalize
from pmoe.data.vision.splits import seeded_generator
from pmoe.errors import PmoeError, check


class _RawImages(Dataset):
    """uint8 image i and its label, for DataLoader workers (no randomness there: augmentation is per batch)."""

    def __init__(self, ds: ImageDataset) -> None:
        self.images, self.labels = ds.images, ds.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


class ImageBatches:
    """Iterates (x float32 (B, C, H, W) normalised, y int64 (B,)) over `ds`, on `device`, one epoch per `iter`.

    Epoch e draws its order and augmentation from `seeded_generator(seed, e)`, so a run is reproducible and can
    resume at any epoch (set `epoch`). Without shuffling, batches follow data set order: predictions concatenated
    line up with `ds.labels` and `ds.groups`. In-memory images are indexed by the permutation directly; files are
    decoded by `num_workers` DataLoader workers. Crop, flip and normalisation run on the uint8 batch on `device`.
    """

    def __init__(self, ds: ImageDataset, batch_size: int, *, shuffle: bool = False, augment: Augment | None = None,
                 seed: int = 0, drop_last: bool = False, num_workers: int = 0,
                 device: torch.device | str = "cpu") -> None:
        check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        check(num_workers >= 0, f"num_workers must be >= 0, got {num_workers}")
        self.ds, self.batch_size, self.shuffle, self.augment = ds, batch_size, shuffle, augment
        self.seed, self.drop_last, self.num_workers, self.device = seed, drop_last, num_workers, torch.device(device)
        self.epoch = 0  # the epoch the next `iter` runs

    def __len__(self) -> int:
        n, b = len(self.ds), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = seeded_generator(self.seed, self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.ds), generator=gen) if self.shuffle else torch.arange(len(self.ds))
        if self.drop_last:
            order = order[: len(self) * self.batch_size]
        batches = list(order.split(self.batch_size))
        for images, labels in self._raw(batches):
            images = images.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
            if self.augment is not None:
                images = augment_batch(images, self.augment, gen)
            yield normalize(images, self.ds.mean, self.ds.std), labels.to(self.device, non_blocking=True)

    def _raw(self, batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """(uint8 images (B, C, H, W), labels (B,)) of each index batch."""
        if self.ds.in_memory:
            return ((self.ds.images[idx], self.ds.labels[idx]) for idx in batches)
        return self._decoded(DataLoader(_RawImages(self.ds), batch_sampler=[b.tolist() for b in batches],
                                        num_workers=self.num_workers, pin_memory=self.device.type == "cuda"))

    @staticmethod
    def _decoded(loader: DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
        """The loader's batches; a PmoeError of a worker (a file that cannot be decoded) with its own one-line message,
        without the worker's traceback that torch adds to it."""
        try:
            yield from loader
        except PmoeError as e:
            raise PmoeError(worker_message(str(e))) from None


def worker_message(message: str) -> str:
    """The message a DataLoader worker's PmoeError was raised with, from the one torch re-raises it with ("Caught
    PmoeError in DataLoader worker process 0. Original Traceback ... pmoe.errors.PmoeError: MESSAGE")."""
    lines = message.strip().splitlines()
    if len(lines) < 2 or not lines[0].startswith("Caught "):
        return message
    return lines[-1].split(": ", 1)[1] if lines[-1].startswith(f"{PmoeError.__module__}.PmoeError: ") else lines[-1]
