"""E³-MoE, Efficient Ensemble of Experts (Allingham et al., 2021, arXiv 2110.03360; vmoe `vit_moe_ensemble.py`,
`ensemble_routing.py`): an ensemble of M members inside one ViT-MoE.

Before the first MoE block the token batch is repeated M times with the copies of an image adjacent (vmoe's
`jnp.repeat(x, M, axis=0)`): row b*M + m is image b as seen by member m. Every MoE layer splits its E experts into M
groups of E/M (group m = experts m*E/M .. (m+1)*E/M - 1), each with its own router: the rows of group m in the
layer's router weight [E, d], so `layer.router.weight[s]` is expert s's router vector as for any routed layer (the
MoE protocol in `pmoe.models.vit`). Copy m is routed top-K with capacity, as V-MoE, within group m only: the gating
is block-diagonal. Attention, dense FFNs, norms and the head are shared.

Head, as vmoe's `evaluate/ensemble.py`: the members' softmax *probabilities* are averaged. `forward` returns
log(mean_m softmax(logits_m)), (B, C): its softmax is the ensemble's distribution, its argmax the ensemble's class,
its cross-entropy the ensemble's NLL (vmoe's eval loss). vmoe *trains* with the members' own cross-entropies, labels
repeated M times (`ensemble_softmax_xent_train`): `forward_members` gives the member logits (B, M, C) for that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers.ffn import MoEMlp
from pmoe.layers.moe import TokenMoE
from pmoe.models.vit import ViT, ViTConfig, validate as validate_vit
from pmoe.routing import TokenRouting, token_choice


class EnsembleTokenMoE(TokenMoE):
    """`TokenMoE` over E experts in M groups: member m of the repeated batch is routed within group m only.

    Input (B*M, n, d), row b*M + m = image b for member m. A routing group is the n tokens of one image and member;
    each expert holds ceil(n*K*c/(E/M)) of them (vmoe's ceil(M*n*K*c/E)); noise std 1/(E/M) while training (vmoe
    divides by the E/M experts of each member's router). Expert buffers hold only their own member's tokens.
    """

    def __init__(self, experts: nn.Module, ensemble_size: int, num_selected: int = 1, capacity_factor: float = 1.05,
                 eval_capacity_factor: float = 1.5, batch_priority: bool = True, noise_std: float | None = None,
                 importance_weight: float = 0.005, load_weight: float = 0.005, router_std: float = 0.02) -> None:
        E, M = experts.num_experts, ensemble_size
        check(M >= 1 and E % M == 0, f"num_experts E={E} must be a multiple of the ensemble size M={M}")
        check(1 <= num_selected <= E // M, f"num_selected must be in 1..E/M={E // M}, got {num_selected}")
        super().__init__(experts, num_selected, capacity_factor, eval_capacity_factor, batch_priority,
                         1.0 / (E // M) if noise_std is None else noise_std, None, importance_weight, load_weight,
                         router_std)
        self.ensemble_size = M

    def route(self, x: Tensor) -> TokenRouting:
        """x: (B*M, n, d) -> routing of G = B groups of T = M*n tokens (an image's M copies), global expert ids."""
        M, E, d = self.ensemble_size, self.num_experts, self.in_features
        check(x.dim() == 3 and x.shape[-1] == d and x.shape[0] % M == 0,
              f"ensemble MoE input must be (B*M, n, d={d}) with M={M}, got shape {tuple(x.shape)}")
        BM, n, _ = x.shape
        B, e = BM // M, E // M
        w = self.router.weight.view(M, e, d)  # (M, E/M, d): group m's router
        logits = torch.einsum("bmnd,med->bmne", x.reshape(B, M, n, d), w)  # (B, M, n, E/M)
        c = self.capacity_factor if self.training else self.eval_capacity_factor
        noise = self.noise_std if self.training else 0.0
        r = token_choice(logits.reshape(BM, n, e), self.num_selected, c, self.batch_priority, noise)  # local ids
        first = (torch.arange(BM, device=x.device) % M).view(BM, 1, 1) * e  # first expert of each row's group
        expert, slot, gates, dropped = (t.reshape(B, M * n, -1)  # (B*M, n, K) -> (B, M*n, K)
                                        for t in (r.expert + first, r.slot, r.gates, r.dropped))
        return TokenRouting(expert, slot, gates, dropped, r.capacity, r.importance_loss, r.load_loss)


class EnsembleMoEMlp(MoEMlp):
    """`MoEMlp` (timm's Mlp signature, token router) whose routed layer is an `EnsembleTokenMoE`."""

    def __init__(self, *args: Any, ensemble_size: int, **kwargs: Any) -> None:
        super().__init__(*args, router="token", **kwargs)
        m = self.moe
        self.moe = EnsembleTokenMoE(m.experts, ensemble_size, m.num_selected, m.capacity_factor,
                                    m.eval_capacity_factor)


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

    def moe_mlp(self) -> Callable[..., nn.Module]:
        c = self.config
        return partial(EnsembleMoEMlp, ensemble_size=c.ensemble_size, num_experts=c.experts,
                       num_selected=c.num_selected, capacity_factor=c.capacity_factor,
                       eval_capacity_factor=c.eval_capacity_factor)

    def forward_features(self, images: Tensor) -> Tensor:
        """images (B, ...) -> (B*M, d) normalised cls tokens, row b*M + m of member m."""
        first = min(self.config.moe_blocks)
        x = self.blocks[:first](self.embed(images))  # (B, n, d), shared by all members
        x = x.repeat_interleave(self.config.ensemble_size, dim=0)  # (B*M, n, d)
        return self.norm(self.blocks[first:](x))[:, 0]

    def forward_members(self, images: Tensor) -> Tensor:
        """images -> (B, M, num_classes) logits of every member."""
        return self.head(self.forward_features(images)).view(images.shape[0], self.config.ensemble_size, -1)

    def forward(self, images: Tensor) -> Tensor:
        """images -> (B, num_classes) log of the members' mean softmax probabilities."""
        log_p = self.forward_members(images).log_softmax(dim=-1)  # (B, M, C)
        return torch.logsumexp(log_p, dim=1) - math.log(self.config.ensemble_size)
