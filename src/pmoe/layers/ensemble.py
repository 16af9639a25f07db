"""`EnsembleTokenMoE`: the routed layer of E³-MoE (Allingham et al., 2021, arXiv 2110.03360; vmoe
`ensemble_routing.py`), E experts in M groups, member m of a repeated batch routed within group m only.

Group m = experts m*E/M .. (m+1)*E/M - 1, its router the rows of group m of the layer's router weight (E, d), so
`router.weight[s]` is expert s's router vector as for any routed layer: the gating is block-diagonal.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers.moe import TokenMoE
from pmoe.layers.routing import TokenRouting


class EnsembleTokenMoE(TokenMoE):
    """`TokenMoE` over E experts in M groups (`groups` = M): member m of the repeated batch is routed within group m.

    Input (B*M, n, d), row b*M + m = image b for member m. A routing group is the n tokens of `group_images` images
    (of gcd(B, group_images) when B is no multiple; default one image) for one member, as vmoe's groups of images
    routed per member; each expert holds ceil(g*n*K*c/(E/M)) of a group's g images (vmoe's ceil(M*S*K*c/E) for a
    group of S tokens); noise std 1/(E/M) while training (vmoe divides by the E/M experts of each member's router).
    Expert buffers hold only their own member's tokens.
    """

    def __init__(self, experts: nn.Module, ensemble_size: int, num_selected: int = 1, capacity_factor: float = 1.05,
                 eval_capacity_factor: float = 1.5, batch_priority: bool = True, noise_std: float | None = None,
                 importance_weight: float = 0.005, load_weight: float = 0.005, router_std: float = 0.02, *,
                 group_images: int = 1) -> None:
        E, M = experts.num_experts, ensemble_size
        check(M >= 1 and E % M == 0, f"num_experts E={E} must be a multiple of the ensemble size M={M}")
        check(1 <= num_selected <= E // M, f"num_selected must be in 1..E/M={E // M}, got {num_selected}")
        super().__init__(experts, num_selected, capacity_factor, eval_capacity_factor, batch_priority,
                         1.0 / (E // M) if noise_std is None else noise_std, None, importance_weight, load_weight,
                         router_std, group_images=group_images)
        self.groups = M

    def route(self, x: Tensor) -> TokenRouting:
        """x: (B*M, n, d) -> routing of G = B/g groups of T = g*M*n tokens (g images' M copies), global expert ids."""
        M, E, d = self.groups, self.num_experts, self.in_features
        check(x.dim() == 3 and x.shape[-1] == d and x.shape[0] % M == 0,
              f"ensemble MoE input must be (B*M, n, d={d}) with M={M}, got shape {tuple(x.shape)}")
        BM, n, _ = x.shape
        B, e = BM // M, E // M
        g = self.images_per_group(B)
        w = self.router.weight.view(M, e, d)  # (M, E/M, d): group m's router
        logits = torch.einsum("bmnd,med->bmne", x.reshape(B, M, n, d), w)  # (B, M, n, E/M)
        # routing groups, one per (g images, member): (B/g, g, M, n, e) -> (B/g * M, g*n, e)
        grouped = logits.view(B // g, g, M, n, e).transpose(1, 2).reshape(B // g * M, g * n, e)
        r = self.choose(grouped)  # local ids
        first = (torch.arange(B // g * M, device=x.device) % M).view(-1, 1, 1) * e  # each group's first expert
        expert, slot, gates, dropped = (  # back to x's order: (B/g, M, g, n, K) -> (B/g, g*M*n, K)
            t.view(B // g, M, g, n, -1).transpose(1, 2).reshape(B // g, g * M * n, -1)
            for t in (r.expert + first, r.slot, r.gates, r.dropped))
        return TokenRouting(expert, slot, gates, dropped, r.capacity, r.importance_loss, r.load_loss)
