"""Data-free expert scores from router matrices, and how many (`KeepSpec`) and which experts each layer keeps.

Every criterion takes the pretrained and the fine-tuned router of one MoE layer, both `[k, d]` (row `s` is expert
`s`'s router vector), and returns one score per expert, `[k]`; the experts with the largest scores are kept.
Scores are float32 (float64 for float64 routers). Shared by `pmoe.prune` and `pmoe.hf`; every criterion is listed,
with what it needs, in `pmoe.prune.registry`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from pmoe.errors import check

RouterScore = Callable[[Tensor, Tensor], Tensor]


def _wide(w: Tensor) -> Tensor:
    """w in float32, or float64 if it is."""
    return w.to(torch.promote_types(w.dtype, torch.float32))


def _norms(w: Tensor) -> Tensor:
    """Row norms of w [k, d]."""
    return _wide(w).norm(dim=1)


def delta_scores(base: Tensor, finetuned: Tensor) -> Tensor:
    """The paper's signed router-norm change `Δ_s = ‖w_s^(T)‖₂ − ‖w_s^(0)‖₂`. Returns `[k]`."""
    return _norms(finetuned) - _norms(base)


def abs_delta_scores(base: Tensor, finetuned: Tensor) -> Tensor:
    """`|Δ_s|`: how much the router norm changed, either way. Returns `[k]`."""
    return delta_scores(base, finetuned).abs()


def delta_norm_scores(base: Tensor, finetuned: Tensor) -> Tensor:
    """`‖w_s^(T) − w_s^(0)‖₂`: how far the router vector moved. Returns `[k]`."""
    return _norms(_wide(finetuned) - _wide(base))


def router_norm_scores(base: Tensor, finetuned: Tensor) -> Tensor:
    """Magnitude baseline: the fine-tuned router norm `‖w_s^(T)‖₂` alone (`base` is unused). Returns `[k]`."""
    return _norms(finetuned)


def random_scores(base: Tensor, finetuned: Tensor, generator: torch.Generator) -> Tensor:
    """Random baseline: uniform scores drawn from `generator`, so a seeded generator gives a reproducible pick."""
    return torch.rand(finetuned.shape[0], generator=generator)


@dataclass(frozen=True)
class KeepSpec:
    """How many experts every MoE layer keeps: `keep` of its k, or `k − round(ratio·k)`; exactly one is given."""

    keep: int | None = None  # experts kept per MoE layer, 1..k-1
    ratio: float | None = None  # or: the fraction pruned per layer, in (0, 1)

    def __post_init__(self) -> None:
        check((self.keep is None) != (self.ratio is None), "give exactly one of keep and ratio")
        check(self.ratio is None or 0 < self.ratio < 1,
              f"ratio {self.ratio} is outside (0, 1); expected the fraction of experts pruned per layer")

    def count(self, k: int, groups: int = 1, where: str = "every MoE layer") -> int:
        """Experts kept in each of the `groups` equal member groups of `k` experts (E³: every group keeps the same
        count); PmoeError unless at least one is kept and one pruned per group."""
        e = k // groups
        check(self.keep is None or self.keep % groups == 0, f"keep {self.keep} is not a multiple of the {groups} "
              f"member groups of {where} (E³ keeps the same count in every group)")
        n = self.keep // groups if self.keep is not None else e - round(self.ratio * e)
        what = f"keep {n * groups}" if self.ratio is None else f"ratio {self.ratio} (keep {n * groups})"
        check(1 <= n <= e - 1, f"{what} is outside {groups}..{(e - 1) * groups}; expected to keep at least one and "
                               f"prune at least one of the {e} experts of each of the {groups} groups of {where}"
              if groups > 1 else f"{what} is outside 1..{k - 1}; expected to keep at least one and prune at least "
                                 f"one of the {k} experts per layer")
        return n


def select_kept(scores: Tensor, keep: int) -> list[int]:
    """Ids of the `keep` experts with the largest scores (ties: the lower id), in ascending id order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return sorted(order[:keep].tolist())
