"""Precise batch norm: the population statistics of every batch-norm layer recomputed with the current weights.

Batch norm normalises with batch statistics in training and with running averages (EMA, momentum 0.1, started at
mean 0 / var 1) in evaluation. The EMA describes weights of the last ~10 steps and the placeholder it started from,
not the weights being evaluated: in a short run with lr 0.1 an eval-mode dense WRN falls from 0.54 (train mode) to
0.22 accuracy, and WRN-pMoE, whose gated expert outputs have a variance of ~1e-3 (gates ~1/n), to chance, the
placeholder's variance of 1 dominating for ~100 steps. As Wu & Johnson, "Rethinking 'Batch' in BatchNorm" (2021),
recommend, `fit` recomputes the statistics before every evaluation and checkpoint: equal-weight averages over
training batches (no augmentation, a fixed order) run in train mode without gradients, at most `max_images` of them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

PRECISE_BN_IMAGES = 8192  # images averaged over (pycls's default); fewer when the training set is smaller


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                         max_images: int = PRECISE_BN_IMAGES,
                         autocast: Callable[[], AbstractContextManager] = nullcontext) -> int:
    """Replace the running mean and variance of `model`'s batch norms by their averages over `batches` (x (B, C, H, W),
    labels ignored) up to `max_images`, each batch weighing the same; returns the images used (0: no batch norm).
    The model's mode and the global random state are left as they were."""
    norms = batch_norms(model)
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: batch t weighs 1/t
    was_training, seen = model.training, 0
    model.train()
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):  # dropout and routing noise must not move the run's RNG
        for x, _ in batches:
            if seen >= max_images:
                break
            with autocast():
                model(x)
            seen += len(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return seen
