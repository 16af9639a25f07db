"""Routing: which expert sees which patch (token), and with what gate.

Two families, both with static output shapes (no `.nonzero()`, no one-hot dispatch tensor):

* `expert_choice` -- pMoE's per-sample prioritized routing (Chowdhury et al., ICML 2023): every expert takes
  the top-`l` patches *of each sample* by its router score. Every expert gets exactly `l` patches per sample.
* `token_choice` -- V-MoE's routing (Riquelme et al., 2021): every token picks its top-`K` experts, each expert
  holds at most `capacity` tokens per group, batch-prioritized routing decides who is dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pmoe.errors import check

GateMode = Literal["softmax_selected", "softmax_all", "hard"]
GATE_MODES: tuple[str, ...] = ("softmax_selected", "softmax_all", "hard")


@dataclass
class PatchRouting:
    """Result of per-sample expert-choice routing."""

    index: Tensor  # (B, k, l) int64: the patches expert s takes from sample b
    gates: Tensor  # (B, k, l): G_{j,s} for those patches
    scores: Tensor  # (B, n, k): router scores g_{j,s} = <w_s, x_j>


def expert_choice(scores: Tensor, l: int, gate: GateMode = "softmax_selected") -> PatchRouting:
    """Each expert picks the `l` highest-scoring patches of every sample.

    Args:
        scores: (B, n, k) router scores.
        l: patches per expert per sample, 1 <= l <= n.
        gate: `softmax_selected` (softmax over the l chosen scores: the paper and its MNIST code),
            `softmax_all` (softmax over all n scores, top l kept unnormalised: the WRN code) or
            `hard` (gate 1 for chosen patches: separately trained routers).
    """
    check(scores.dim() == 3, f"router scores must be (B, n, k), got shape {tuple(scores.shape)}")
    n = scores.shape[1]
    check(1 <= l <= n, f"l (patches per expert) must be in 1..n={n}, got l={l}")
    check(gate in GATE_MODES, f"gate must be one of {GATE_MODES}, got {gate!r}")
    per_expert = scores.transpose(1, 2)  # (B, k, n)
    top, index = per_expert.topk(l, dim=-1, sorted=False)  # (B, k, l)
    if gate == "softmax_selected":
        gates = top.softmax(dim=-1)
    elif gate == "softmax_all":
        gates = per_expert.softmax(dim=-1).gather(-1, index)
    else:
        gates = torch.ones_like(top)
    return PatchRouting(index=index, gates=gates, scores=scores)


@dataclass
class TokenRouting:
    """Result of token-choice top-K routing with capacity, per group of T tokens."""

    expert: Tensor  # (G, T, K) int64: the K experts each token chose, best first
    slot: Tensor  # (G, T, K) int64: position in that expert's buffer; == capacity when dropped
    gates: Tensor  # (G, T, K): combine weights, 0 where dropped
    dropped: Tensor  # (G, T, K) bool: the choice did not fit in the expert's buffer
    capacity: int  # buffer size of every expert in every group
    importance_loss: Tensor  # () V-MoE importance loss (CV² of gate mass per expert)
    load_loss: Tensor  # () V-MoE load loss (CV² of the noisy-selection probability); 0 without noise


def expert_capacity(tokens: int, num_selected: int, num_experts: int, capacity_factor: float) -> int:
    """V-MoE capacity: ceil(T * K * c / k), at least 1."""
    return max(1, math.ceil(tokens * num_selected * capacity_factor / num_experts))


def _cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation over the last axis, averaged over the others."""
    return (x.var(dim=-1, unbiased=False) / x.mean(dim=-1).pow(2)).mean()


def _load_loss(logits: Tensor, noisy: Tensor, num_selected: int, noise_std: float) -> Tensor:
    """V-MoE load loss: P(expert in top-K if the noise were re-drawn), CV² over experts.  logits: (G, T, k)."""
    threshold = noisy.topk(num_selected, dim=-1).values[..., -1:]  # (G, T, 1): K-th largest noisy logit
    p = 1.0 - torch.special.ndtr((threshold - logits) / noise_std)  # (G, T, k)
    return _cv_squared(p.mean(dim=1))


def _buffer_slots(expert: Tensor, priority: Tensor, num_experts: int) -> Tensor:
    """Position of every (token, choice) in its expert's buffer under batch-prioritized routing.

    All first choices are placed before all second choices; within a choice, tokens go in `priority`
    order (a permutation of 0..T-1 per group, lower = earlier).  expert: (G, T, K) -> slots (G, T, K).
    """
    G, T, K = expert.shape
    order = torch.arange(K, device=expert.device).view(1, 1, K) * T + priority.unsqueeze(-1)  # (G, T, K)
    # Sort all K*T assignments of a group by (expert, order): rank inside an expert's run = its slot.
    key = expert * (K * T) + order  # (G, T, K), unique per group
    flat = key.reshape(G, T * K)
    sorted_key, perm = flat.sort(dim=-1)  # (G, T*K)
    sorted_expert = sorted_key // (K * T)
    counts = torch.zeros(G, num_experts, dtype=torch.long, device=expert.device)
    counts.scatter_add_(1, sorted_expert, torch.ones_like(sorted_expert))
    starts = counts.cumsum(dim=1) - counts  # (G, k): first sorted position of each expert
    rank = torch.arange(T * K, device=expert.device).expand(G, -1) - starts.gather(1, sorted_expert)
    return torch.empty_like(rank).scatter_(1, perm, rank).view(G, T, K)


def token_choice(
    logits: Tensor,
    num_selected: int = 2,
    capacity_factor: float = 1.05,
    batch_priority: bool = True,
    noise_std: float = 0.0,
) -> TokenRouting:
    """Top-K experts per token with a capacity per expert (V-MoE).

    Args:
        logits: (G, T, k) router logits for G groups of T tokens.
        num_selected: K, experts per token.
        capacity_factor: c; every expert takes at most ceil(T*K*c/k) tokens of a group.
        batch_priority: place tokens in order of their top gate (BPR) instead of their position.
        noise_std: std of the Gaussian noise added to the logits (V-MoE: 1/k while training, 0 at eval).
    """
    check(logits.dim() == 3, f"router logits must be (G, T, k), got shape {tuple(logits.shape)}")
    G, T, k = logits.shape
    check(1 <= num_selected <= k, f"num_selected (K) must be in 1..k={k}, got {num_selected}")
    check(capacity_factor > 0, f"capacity_factor must be > 0, got {capacity_factor}")
    capacity = expert_capacity(T, num_selected, k, capacity_factor)
    importance_loss = _cv_squared(logits.softmax(dim=-1).sum(dim=1))
    if noise_std > 0:
        noisy = logits + noise_std * torch.randn_like(logits)
        load_loss = _load_loss(logits, noisy, num_selected, noise_std)
    else:
        noisy, load_loss = logits, logits.new_zeros(())
    probs = noisy.softmax(dim=-1)  # (G, T, k)
    top_gates, expert = probs.topk(num_selected, dim=-1)  # (G, T, K), best first
    if batch_priority:
        by_gate = top_gates[..., 0].argsort(dim=-1, descending=True, stable=True)  # (G, T)
        priority = torch.empty_like(by_gate).scatter_(1, by_gate, torch.arange(T, device=logits.device).expand(G, -1))
    else:
        priority = torch.arange(T, device=logits.device).expand(G, -1)
    slot = _buffer_slots(expert, priority, k)
    dropped = slot >= capacity
    slot = slot.clamp(max=capacity)
    gates = top_gates.masked_fill(dropped, 0.0)
    return TokenRouting(expert, slot, gates, dropped, capacity, importance_loss, load_loss)
