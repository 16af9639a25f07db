"""Data across ranks: each rank trains on its share of every global batch and evaluates its share of the data.

The global batch order is that of one process with the same seed (`ImageBatches`' shuffle of (seed, epoch)); rank r
of W takes samples [r·B/W, (r+1)·B/W) of each batch of B, so a step sees the same B samples as in one process.
Augmentation and routing noise draw from the rank's own streams, (seed, rank). Evaluation splits the data set in W
contiguous parts, runs them as batches of the same sizes on every rank (expert parallelism exchanges rows) and
gathers per-sample results: every sample counts once, and the metrics are those of one process.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.data.vision import Augment, ImageBatches, ImageDataset
from pmoe.data.vision.splits import seeded_generator
from pmoe.train.distributed.mesh import Parallel, all_gather
from pmoe.train.evaluate import image_metrics
from pmoe.errors import check
from pmoe.train.state import stream_seed


class ShardedBatches:
    """This rank's share (B/W samples) of every batch of B that `ImageBatches(shuffle=True, drop_last=True)` gives
    one process; the same interface (`ds`, `epoch`, `len`, `iter`)."""

    def __init__(self, ds: ImageDataset, batch_size: int, par: Parallel, *, augment: Augment | None = None,
                 seed: int = 0, num_workers: int = 0) -> None:
        check(batch_size % par.world == 0, f"the batch size {batch_size} must be a multiple of the {par.world} "
                                           f"processes, each of which takes an equal share of every batch")
        self.ds, self.batch_size, self.par, self.augment = ds, batch_size, par, augment
        self.seed, self.num_workers, self.epoch = seed, num_workers, 0

    def __len__(self) -> int:
        return len(self.ds) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        W, share = self.par.world, self.batch_size // self.par.world
        order = torch.randperm(len(self.ds), generator=seeded_generator(self.seed, self.epoch))  # as ImageBatches'
        mine = order[: len(self) * self.batch_size].view(len(self), W, share)[:, self.par.rank].reshape(-1)
        batches = ImageBatches(self.ds.subset(mine), share, augment=self.augment,
                               seed=stream_seed(self.seed, self.par.rank), num_workers=self.num_workers,
                               device=self.par.device)
        batches.epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(batches)


def reduce_epoch(stats: Tensor) -> Tensor:
    """An epoch's stats (5,) over all ranks: sums of loss, aux loss and correct predictions; the first step whose loss
    was not finite (-1: none); whether the weights are finite (1 or 0)."""
    sums, first_bad, finite = stats[:3].clone(), stats[3:4].clone(), stats[4:].clone()
    dist.all_reduce(sums)
    first_bad = torch.where(first_bad < 0, float("inf"), first_bad)
    dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return torch.cat([sums, torch.where(first_bad.isinf(), -1.0, first_bad), finite])


@torch.no_grad()
def evaluate_sharded(net: nn.Module, ds: ImageDataset, batch_size: int, device: torch.device,
                     num_workers: int = 0) -> dict[str, Any]:
    """`evaluate_images`' metrics of `net` (scores (B, C) of images) on `ds`, called by every rank of the process
    group: each rank runs ceil(N/W) samples (the last rank's part padded with copies of sample N-1), in batches of
    `batch_size`, on `device`."""
    N, W, rank = len(ds), dist.get_world_size(), dist.get_rank()
    part = -(-N // W)
    idx = torch.arange(rank * part, (rank + 1) * part).clamp(max=N - 1)  # (part,)
    was_training, rows = net.training, []
    net.eval()
    for x, y in ImageBatches(ds.subset(idx), batch_size, device=device, num_workers=num_workers):
        scores = net(x).float()  # (B, C)
        rows.append(torch.stack([F.cross_entropy(scores, y, reduction="none"), scores.argmax(-1).float()], 1))
    net.train(was_training)
    every = all_gather(torch.cat(rows))[:N].cpu()  # (N, 2): loss and prediction of every sample
    return image_metrics(every[:, 0], every[:, 1].long(), ds)
