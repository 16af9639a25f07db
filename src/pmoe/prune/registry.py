"""The expert-scoring criteria, in one registry: name, score function, and what each needs.

Data-free criteria read the routers of the fine-tuned model (and of the pretrained one where `needs_pretrained`):
score(base [k, d], finetuned [k, d]) -> [k]. Data-driven ones (`needs_data`) read one pass of the fine-tuned model
over calibration batches: score(LayerUsage) -> [k] (`pmoe.prune.usage`). Larger scores are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from pmoe.errors import check
from pmoe.prune import criteria, usage


@dataclass(frozen=True)
class Criterion:
    name: str
    score: Callable[..., Tensor]  # see the module docstring; `random` also takes a torch.Generator
    needs_pretrained: bool  # compares the fine-tuned routers with the pretrained ones
    needs_data: bool  # scores experts on calibration data


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("router-norm-change", criteria.delta_scores, True, False),  # the paper's Δ_s = ‖w_s^(T)‖ − ‖w_s^(0)‖
    Criterion("router-norm-change-abs", criteria.abs_delta_scores, True, False),  # |Δ_s|
    Criterion("router-delta-norm", criteria.delta_norm_scores, True, False),  # ‖w_s^(T) − w_s^(0)‖
    Criterion("router-norm", criteria.router_norm_scores, False, False),  # ‖w_s^(T)‖
    Criterion("random", criteria.random_scores, False, False),  # seeded
    Criterion("frequency", usage.frequency, False, True),
    Criterion("gate-mass", usage.gate_mass, False, True),
    Criterion("saliency", usage.saliency, False, True),  # REAP
)}
METHODS = tuple(CRITERIA)
DATA_FREE = tuple(name for name, c in CRITERIA.items() if not c.needs_data)


def criterion(method: str, allowed: tuple[str, ...] = METHODS) -> Criterion:
    """The registry entry of `method`; PmoeError naming the methods `allowed` if it is not one of them."""
    check(method in allowed, f"method {method!r} is unknown; expected one of {list(allowed)}")
    return CRITERIA[method]


def router_scorer(method: str, seed: int = 0) -> Callable[[Tensor, Tensor], Tensor]:
    """score(base, finetuned) of data-free criterion `method`; `random` draws from one generator seeded `seed`,
    layer after layer."""
    score = criterion(method, DATA_FREE).score
    if method != "random":
        return score
    generator = torch.Generator().manual_seed(seed)
    return lambda base, finetuned: score(base, finetuned, generator)
