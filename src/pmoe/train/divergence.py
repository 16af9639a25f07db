"""Divergence: a NaN or infinite loss, or weights a non-finite gradient made so, stops a run before anything of it is
evaluated or saved. Steps are watched on the device (`mark`, no host sync per step); `check_finite` reads the mark
and the weights once per epoch."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from pmoe.errors import PmoeError


def no_step(device: torch.device | str) -> Tensor:
    """The initial mark of `mark`: no step with a non-finite loss yet."""
    return torch.full((), -1.0, device=device)


def mark(first: Tensor, loss: Tensor, step: int) -> Tensor:
    """`first` (the first step whose loss was NaN or infinite, -1 for none) updated with the loss of step `step`."""
    return torch.where((first < 0) & ~torch.isfinite(loss.detach().float()), float(step), first)


def finite_weights(params: Iterable[Tensor]) -> Tensor:
    """Whether every one of `params` is finite, as a 0-dim bool tensor (no host sync)."""
    return torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()


def check_finite(first: float, weights_ok: bool, step: int, epoch: str) -> None:
    """Stop the run (PmoeError) if a step's loss was non-finite (`first` >= 0) or the weights are, after `step`."""
    if first >= 0:
        where = f"the training loss is NaN or infinite at step {int(first)} ({epoch})"
    elif not weights_ok:
        where = f"the weights are NaN or infinite after step {step} ({epoch}): a gradient was"
    else:
        return
    raise PmoeError(f"training diverged: {where}; stopped before evaluating or saving it (a checkpoint saved "
                    "earlier is kept as it was). Lower the learning rate, or clip gradients (--clip-norm)")
