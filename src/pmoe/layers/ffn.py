"""`MoEMlp`: a drop-in MoE replacement for timm's `Mlp` (same constructor signature, tensor in, tensor out).

timm's `Block(mlp_layer=...)` builds its FFN as `mlp_layer(in_features, hidden_features, out_features, act_layer,
bias, drop)`; `functools.partial(MoEMlp, num_experts=8, router="patch")` plugs in. Each expert has the full
hidden width, as in V-MoE. The last auxiliary loss and routing stay on the module (`aux_loss`, `last_routing`)
for the training loop and for routing analysis.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers.experts import MlpExperts
from pmoe.layers.moe import PatchMoE, TokenMoE
from pmoe.routing import GateMode


class MoEMlp(nn.Module):
    """MoE FFN over tokens (B, n, d).

    Args:
        num_experts: k.
        router: `patch` (pMoE per-sample expert choice, l = ceil(n*K/k) patches per expert) or `token`
            (V-MoE top-K with capacity and BPR).
        num_selected: K, experts per token (token) or on average per patch (patch).
        gate: gate mode of patch routing.
        capacity_factor, eval_capacity_factor: token routing buffer sizes.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: type[nn.Module] | None = None, bias: bool = True,
                 drop: float = 0.0, *, num_experts: int = 8, router: str = "token", num_selected: int = 2,
                 gate: GateMode = "softmax_selected", capacity_factor: float = 1.05,
                 eval_capacity_factor: float = 1.5) -> None:
        super().__init__()
        check(router in ("patch", "token"), f"router must be 'patch' or 'token', got {router!r}")
        check(norm_layer is None, "MoEMlp has no inner norm layer; pass norm_layer=None")
        check(1 <= num_selected <= num_experts, f"num_selected must be in 1..{num_experts}, got {num_selected}")
        experts = MlpExperts(num_experts, in_features, hidden_features or in_features, out_features,
                             act_layer=act_layer, bias=bias, drop=drop)
        self.router_kind, self.num_selected = router, num_selected
        if router == "patch":
            self.moe: PatchMoE | TokenMoE = PatchMoE(experts, l=1, gate=gate)
        else:
            self.moe = TokenMoE(experts, num_selected, capacity_factor, eval_capacity_factor)
        self.aux_loss: Tensor | None = None
        self.last_routing = None

    def patches_per_expert(self, n: int) -> int:
        """l for n tokens: every token gets K experts on average."""
        return min(n, math.ceil(n * self.num_selected / self.moe.num_experts))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, n, d) -> (B, n, d_out)."""
        if self.router_kind == "patch":
            self.moe.l = self.patches_per_expert(x.shape[1])
        out = self.moe(x)
        self.aux_loss, self.last_routing = out.aux_loss, out.routing
        return out.output
