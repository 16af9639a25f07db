"""Optimizer and learning-rate schedule of the vision training loop: SGD with momentum or AdamW, linear warm-up then
cosine decay (or constant), gradient clipping by global norm."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pmoe.errors import check

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
# Family defaults: what a run takes for the fields that belong to the optimizer when a flag switches to it.
DEFAULTS = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            "adamw": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.05}}


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (momentum) | adamw
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum; AdamW's beta1
    weight_decay: float = 5e-4  # on weights of 2 or more dims only (no biases, norms, embeddings of 1 dim)
    warmup_steps: int = 0  # linear warm-up, then cosine decay to 0 over the remaining steps
    warmup_cap: float = 1.0  # the warm-up lasts at most this fraction of the run's steps (short runs warm up less)
    schedule: str = "cosine"  # cosine | constant (after the warm-up)
    clip_norm: float | None = None  # gradient clipping by global norm

    def __post_init__(self) -> None:
        check(self.name in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check(self.lr > 0 and self.weight_decay >= 0 and 0 <= self.momentum < 1 and self.warmup_steps >= 0
              and 0 < self.warmup_cap <= 1,
              f"need lr > 0, weight_decay >= 0, 0 <= momentum < 1, warmup_steps >= 0, 0 < warmup_cap <= 1; got "
              f"lr={self.lr}, weight_decay={self.weight_decay}, momentum={self.momentum}, "
              f"warmup_steps={self.warmup_steps}, warmup_cap={self.warmup_cap}")
        check(self.clip_norm is None or self.clip_norm > 0, f"clip_norm must be > 0 or None, got {self.clip_norm}")


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer of `model`'s trainable parameters; weight decay on those of 2 or more dims."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


@dataclass
class Schedule:
    """lr multiplier of optimizer step s (0-based) of `total`: (s + 1) / warmup during the warm-up, then
    cosine 0.5 (1 + cos(pi (s - warmup) / (total - warmup))) or constant 1."""

    total: int
    warmup: int = 0
    kind: str = "cosine"

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / max(1, self.total - self.warmup)))


def warmup_length(cfg: OptimConfig, total_steps: int) -> int:
    """Warm-up steps of a run of `total_steps`: min(warmup_steps, floor(warmup_cap * total_steps))."""
    return min(cfg.warmup_steps, math.floor(cfg.warmup_cap * total_steps))


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step scheduler of `opt` over `total_steps` optimizer steps (call `.step()` after every `opt.step()`)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, Schedule(total_steps, warmup_length(cfg, total_steps), cfg.schedule))
