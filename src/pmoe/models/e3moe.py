"""E³-MoE, Efficient Ensemble of Experts (Allingham et al., 2021, arXiv 2110.03360; vmoe `vit_moe_ensemble.py`,
`ensemble_routing.py`): an ensemble of M members inside one ViT-MoE.

Before the first MoE block the token batch is repeated M times with the copies of an image adjacent (vmoe's
`jnp.repeat(x, M, axis=0)`): row b*M + m is image b as seen by member m. Every MoE layer
(`pmoe.layers.EnsembleTokenMoE`) splits its E experts into M groups of E/M, each with its own router, and routes copy
m top-K with capacity, as V-MoE, within group m only. Attention, dense FFNs, norms and the head are shared.

Head, as vmoe's `evaluate/ensemble.py`: the members' softmax *probabilities* are averaged. `forward` returns
log(mean_m softmax(logits_m)), (B, C): its softmax is the ensemble's distribution, its argmax the ensemble's class,
its cross-entropy the ensemble's NLL (vmoe's eval loss). vmoe *trains* with the members' own cross-entropies, labels
repeated M times (`ensemble_softmax_xent_train`): `forward_members` gives the member logits (B, M, C) for that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pmoe.errors import check
from pmoe.models.vit import ViT, ViTConfig, validate as validate_vit


@dataclass
class E3Config(ViTConfig):
    """A ViT-MoE config plus the ensemble size; defaults: E³-S/32 (vmoe `eee_s32_last2`), K=1, M=2."""

    image_size: int = 224
    patch_size: int = 32
    dim: int = 512
    depth: int = 8
    heads: int = 8
    mlp_dim: int = 2048
    moe_blocks: tuple[int, ...] = (5, 7)  # the last two odd blocks
    num_selected: int = 1
    ensemble_size: int = 2  # M; experts must be a multiple of it


def validate(cfg: E3Config) -> None:
    validate_vit(cfg)
    check(len(cfg.moe_blocks) > 0, "an E3 model needs at least one MoE block (moe_blocks is empty)")
    check(cfg.router == "token", f"E3 routes tokens top-K within each member's group: router must be 'token', "
                                 f"got {cfg.router!r}")
    check(cfg.ensemble_size >= 1 and cfg.experts % cfg.ensemble_size == 0,
          f"experts={cfg.experts} must be a multiple of ensemble_size={cfg.ensemble_size}")
    per_member = cfg.experts // cfg.ensemble_size
    check(cfg.num_selected <= per_member,
          f"num_selected must be in 1..experts/ensemble_size={per_member}, got {cfg.num_selected}")


class E3ViT(ViT):
    """E³ ViT-MoE.  images (B, C, s, s) -> log ensemble probabilities (B, num_classes)."""

    def __init__(self, cfg: E3Config) -> None:
        validate(cfg)
        super().__init__(cfg)

    @property
    def ensemble_size(self) -> int:
        return self.config.ensemble_size

    def forward_features(self, images: Tensor) -> Tensor:
        """images (B, ...) -> (B*M, d) normalised cls tokens, row b*M + m of member m."""
        first = min(self.config.moe_blocks)
        x = self.blocks[:first](self.embed(images))  # (B, n, d), shared by all members
        x = x.repeat_interleave(self.ensemble_size, dim=0)  # (B*M, n, d)
        return self.norm(self.blocks[first:](x))[:, 0]

    def forward_members(self, images: Tensor) -> Tensor:
        """images -> (B, M, num_classes) logits of every member."""
        return self.head(self.forward_features(images)).view(images.shape[0], self.ensemble_size, -1)

    def forward(self, images: Tensor) -> Tensor:
        """images -> (B, num_classes) log of the members' mean softmax probabilities."""
        log_p = self.forward_members(images).log_softmax(dim=-1)  # (B, M, C)
        return torch.logsumexp(log_p, dim=1) - math.log(self.ensemble_size)
