"""Data-free expert scores from router matrices, and the per-layer choice of experts to keep.

Every criterion takes the pretrained and the fine-tuned router of one MoE layer, both `[k, d]` (row `s` is expert
`s`'s router vector), and returns one score per expert, `[k]`; the experts with the largest scores are kept.
"""
from __future__ import annotations

import torch


def delta_scores(base: torch.Tensor, finetuned: torch.Tensor) -> torch.Tensor:
    """The paper's signed router-norm change `Δ_s = ‖w_s^(T)‖₂ − ‖w_s^(0)‖₂` (float32). Returns `[k]`."""
    return finetuned.float().norm(dim=1) - base.float().norm(dim=1)


def router_norm_scores(base: torch.Tensor, finetuned: torch.Tensor) -> torch.Tensor:
    """Magnitude baseline: the fine-tuned router norm `‖w_s^(T)‖₂` alone (`base` is unused). Returns `[k]`."""
    return finetuned.float().norm(dim=1)


def random_scores(base: torch.Tensor, finetuned: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random baseline: uniform scores drawn from `generator`, so a seeded generator gives a reproducible pick."""
    return torch.rand(finetuned.shape[0], generator=generator)


def select_kept(scores: torch.Tensor, keep: int) -> list[int]:
    """Ids of the `keep` experts with the largest scores (ties: the lower id), in ascending id order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return sorted(order[:keep].tolist())
