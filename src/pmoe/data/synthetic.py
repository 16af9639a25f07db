"""The data model of the pMoE theory: one class-discriminative patch among label-irrelevant ones."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from pmoe.data.base import PatchDataset, balanced_labels
from pmoe.errors import check


@dataclass
class SyntheticConfig:
    n: int = 16  # patches per sample
    d: int = 64  # patch dimension, >= num_irrelevant + 2
    num_irrelevant: int = 8  # label-irrelevant patterns q_i
    similarity: float = 0.5  # cosine of each q_i to o_1 (even i) or o_2 (odd i); 0 = orthogonal, in [0, 1)
    noise: float = 0.1  # std of the Gaussian noise on every patch coordinate
    pattern_scale: float = 1.0  # norm of every pattern
    pairs: int = 1  # pairs of discriminative patterns (o_1^p for y=+1, o_2^p for y=-1), p = 0..pairs-1
    active: tuple[int, ...] | None = None  # pairs that set labels (None: all); the patterns of the others are then
    # label-irrelevant and fill positions as the q's do

    def __post_init__(self) -> None:
        check(self.n >= 1, f"synthetic n (patches per sample) must be >= 1, got {self.n}")
        check(self.num_irrelevant >= 1, f"synthetic num_irrelevant must be >= 1, got {self.num_irrelevant}")
        check(self.pairs >= 1, f"synthetic pairs must be >= 1, got {self.pairs}")
        if self.active is not None:
            self.active = tuple(self.active)  # a JSON config gives a list
            check(len(self.active) > 0 and len(set(self.active)) == len(self.active)
                  and all(0 <= p < self.pairs for p in self.active),
                  f"synthetic active must be distinct pair ids in 0..{self.pairs - 1} (or None), got {self.active}")
        check(self.d >= self.num_irrelevant + 2 * self.pairs, f"synthetic d must be >= num_irrelevant + 2 * pairs = "
              f"{self.num_irrelevant + 2 * self.pairs} so that the patterns fit, got {self.d}")
        check(0 <= self.similarity < 1, f"synthetic similarity must lie in [0, 1), got {self.similarity}")
        check(self.noise >= 0, f"synthetic noise must be >= 0, got {self.noise}")
        check(self.pattern_scale > 0, f"synthetic pattern_scale must be > 0, got {self.pattern_scale}")


def synthetic_patterns(cfg: SyntheticConfig, patterns_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminative patterns o (2P, d) and the irrelevant ones q (num_irrelevant, d), float64.

    From a random orthonormal basis e_0 .. e_{2P+M-1} (P = pairs, M = num_irrelevant): o = e_0 .. e_{2P-1}, row 2p
    being o_1^p (y=+1) and row 2p+1 o_2^p (y=-1), and q_i = s·o_{i%2P} + sqrt(1 - s²)·e_{2P+i} (s = similarity),
    all scaled to norm pattern_scale. With one pair: q_0, q_2, ... have cosine s to o_1 and q_1, q_3, ... to o_2;
    every other pair is orthogonal, except q's resembling the same o, whose cosine is s².
    """
    gen = torch.Generator().manual_seed(patterns_seed)
    M, P2 = cfg.num_irrelevant, 2 * cfg.pairs
    basis = torch.linalg.qr(torch.randn(cfg.d, M + P2, generator=gen, dtype=torch.float64)).Q.T  # (M+2P, d)
    o = basis[:P2]  # (2P, d)
    s = cfg.similarity
    q = s * o[torch.arange(M) % P2] + math.sqrt(1 - s * s) * basis[P2:]  # (M, d)
    return cfg.pattern_scale * o, cfg.pattern_scale * q


def make_synthetic(cfg: SyntheticConfig, num_samples: int, seed: int, patterns_seed: int = 0) -> PatchDataset:
    """`num_samples` samples of the theory's data model; patterns from `patterns_seed`, samples from `seed`.

    Labels are balanced; sample i holds o_1^p (y=+1) or o_2^p (y=-1) of a uniformly random active pair p at the
    uniformly random position disc_pos[i] and a uniformly random label-irrelevant pattern (a q, or a pattern of an
    inactive pair) at each other position, plus N(0, noise²) on every coordinate.
    """
    check(num_samples >= 1, f"num_samples must be >= 1, got {num_samples}")
    o, q = synthetic_patterns(cfg, patterns_seed)
    gen = torch.Generator().manual_seed(seed)
    N, n = num_samples, cfg.n
    y = balanced_labels(N, gen)  # (N,)
    disc_pos = torch.randint(n, (N,), generator=gen)  # (N,)
    active = torch.tensor(cfg.active if cfg.active is not None else range(cfg.pairs))  # (A,)
    inactive = torch.ones(cfg.pairs, dtype=torch.bool).index_fill_(0, active, False).repeat_interleave(2)  # (2P,)
    background = torch.cat([q, o[inactive]])  # (M + 2 * inactive pairs, d): the label-irrelevant patterns
    x = background[torch.randint(len(background), (N, n), generator=gen)]  # (N, n, d)
    pair = active[torch.randint(len(active), (N,), generator=gen)] if len(active) > 1 else active.expand(N)  # (N,)
    x[torch.arange(N), disc_pos] = o[2 * pair + (y < 0).long()]
    x = (x + cfg.noise * torch.randn(x.shape, generator=gen, dtype=torch.float64)).float()
    meta = {"name": "synthetic", **dataclasses.asdict(cfg), "num_samples": N, "seed": seed,
            "patterns_seed": patterns_seed}
    return PatchDataset(x, y, disc_pos, meta=meta)
