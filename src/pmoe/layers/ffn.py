"""`MoEMlp`: a drop-in MoE replacement for timm's `Mlp` (same constructor signature, tensor in, tensor out).

timm's `Block(mlp_layer=...)` builds its FFN as `mlp_layer(in_features=, hidden_features=, act_layer=, norm_layer=,
bias=, drop=, device=, dtype=)`; `functools.partial(MoEMlp, num_experts=8, router="patch")` plugs in. Each expert has the full hidden
width, as in V-MoE. Add `pmoe.layers.collect_aux_loss(model)` to the task loss after the forward: the host model
needs to know nothing else.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers.ensemble import EnsembleTokenMoE
from pmoe.layers.experts import MlpExperts
from pmoe.layers.moe import PatchMoE, TokenMoE
from pmoe.layers.routing import GateMode


class MoEMlp(nn.Module):
    """MoE FFN over tokens (B, n, d) -> (B, n, d_out); its routed layer is `moe`.

    Args:
        num_experts: k.
        router: `patch` (pMoE per-sample expert choice, l = ceil(n*K/k) patches per expert, n per call) or `token`
            (V-MoE top-K with capacity and BPR).
        num_selected: K, experts per token (token) or on average per patch (patch).
        gate: gate mode of patch routing.
        capacity_factor, eval_capacity_factor: token routing buffer sizes.
        group_images: token routing groups of this many samples (`TokenMoE`, E³ per member; vmoe: 8), else of one.
        ensemble_size: M > 1 routes the token router's experts in M groups (E³, `EnsembleTokenMoE`).
        device, dtype: where and in what type the weights go (timm's factory arguments).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: type[nn.Module] | None = None, bias: bool = True,
                 drop: float = 0.0, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 num_experts: int = 8, router: str = "token", num_selected: int = 2,
                 gate: GateMode = "softmax_selected", capacity_factor: float = 1.05,
                 eval_capacity_factor: float = 1.5, ensemble_size: int = 1, group_images: int = 1) -> None:
        super().__init__()
        check(router in ("patch", "token"), f"router must be 'patch' or 'token', got {router!r}")
        check(norm_layer is None, "MoEMlp has no inner norm layer; pass norm_layer=None")
        check(ensemble_size == 1 or router == "token",
              f"an ensemble (ensemble_size={ensemble_size}) routes tokens: router must be 'token', got {router!r}")
        check(group_images == 1 or router == "token",
              f"group_images={group_images} groups the token router's samples (not the patch router's, whose experts "
              f"choose per sample)")
        experts = MlpExperts(num_experts, in_features, hidden_features or in_features, out_features,
                             act_layer=act_layer, bias=bias, drop=drop)
        if router == "patch":
            self.moe: PatchMoE | TokenMoE = PatchMoE(experts, gate=gate, num_selected=num_selected)
        else:
            self.moe = TokenMoE(experts, num_selected, capacity_factor, eval_capacity_factor,
                                group_images=group_images)
            if ensemble_size > 1:  # after the token layer, as always: a seed gives E³ the same initial weights
                self.moe = EnsembleTokenMoE(experts, ensemble_size, num_selected, capacity_factor, eval_capacity_factor,
                                            group_images=group_images)
        self.to(device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, n, d) -> (B, n, d_out)."""
        return self.moe(x).output
