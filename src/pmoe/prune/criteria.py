"""Data-free expert scores from router matrices, and how many and which experts each layer keeps.

Every criterion takes the pretrained and the fine-tuned router of one MoE layer, both `[k, d]` (row `s` is expert
`s`'s router vector), and returns one score per expert, `[k]`; the experts with the largest scores are kept.
Scores are float32 (float64 for float64 routers). Shared by `pmoe.prune` and `pmoe.hf`.
"""
from __future__ import annotations

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


ROUTER_CRITERIA: dict[str, RouterScore] = {
    "router-norm-change": delta_scores,  # the paper's criterion
    "router-norm-change-abs": abs_delta_scores,
    "router-delta-norm": delta_norm_scores,
    "router-norm": router_norm_scores,
}

DATA_FREE = (*ROUTER_CRITERIA, "random")  # methods that read routers only


def router_scorer(method: str, seed: int = 0) -> RouterScore:
    """The score function of a router criterion or of `random`; `random` draws from one generator seeded `seed`,
    layer after layer."""
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return lambda base, finetuned: random_scores(base, finetuned, generator)
    check(method in ROUTER_CRITERIA, f"method {method!r} is not a router criterion; expected one of {list(DATA_FREE)}")
    return ROUTER_CRITERIA[method]


def check_ratio(ratio: float | None) -> None:
    check(ratio is None or 0 < ratio < 1,
          f"ratio {ratio} is outside (0, 1); expected the fraction of experts pruned per layer")


def kept_count(k: int, keep: int | None = None, ratio: float | None = None) -> int:
    """Experts kept out of `k`: `keep`, or `k − round(ratio·k)`; PmoeError unless 1..k-1."""
    check((keep is None) != (ratio is None), "give exactly one of keep and ratio")
    check_ratio(ratio)
    n = keep if keep is not None else k - round(ratio * k)
    what = f"keep {n}" if ratio is None else f"ratio {ratio} (keep {n})"
    check(1 <= n <= k - 1, f"{what} is outside 1..{k - 1}; expected to keep at least one and prune "
                           f"at least one of the {k} experts per layer")
    return n


def select_kept(scores: Tensor, keep: int) -> list[int]:
    """Ids of the `keep` experts with the largest scores (ties: the lower id), in ascending id order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return sorted(order[:keep].tolist())
