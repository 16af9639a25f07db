"""`HFMoEBlock`: a pmoe routed layer in place of a transformers sparse-MoE block (Mixtral, Qwen3-MoE, ...: the
`mlp` of a decoder layer), for trying pmoe routing inside a transformers model.

transformers 5 has its MoE block return only the hidden states (B, T, d) and records router logits with forward hooks
on the family's router module (`MixtralTopKRouter`, `Qwen3MoeTopKRouter`, ...; output 0, (B*T, k)), which its
`output_router_logits` and load-balancing loss use. So the block keeps the replaced block's router module as `gate`,
gives it the pmoe layer's router weight (one parameter) and runs it for those hooks. Use a `TokenMoE` in a causal
model: `PatchMoE`'s per-sequence expert choice looks at the whole sequence.
"""
from __future__ import annotations

from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers.base import RoutedLayer


class HFMoEBlock(nn.Module):
    """(B, T, d) -> (B, T, d): `layer`'s output; `gate` (the host's router module, weight (k, d)) shares its router.

    The pmoe aux loss is `pmoe.layers.collect_aux_loss(model)`; the host's own load-balancing loss, computed from the
    recorded logits, comes with `output_router_logits=True` as usual.
    """

    def __init__(self, layer: RoutedLayer, gate: nn.Module) -> None:
        super().__init__()
        shape, want = tuple(gate.weight.shape), tuple(layer.router.weight.shape)
        check(shape == want, f"the host's router weight is {list(shape)}; the pmoe layer's router is {list(want)} "
                             "(k experts x d features): build the layer with the host's k and hidden size")
        gate.weight = layer.router.weight
        self.layer, self.gate = layer, gate

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, d) -> (B, T, d)."""
        self.gate(x)  # the host's hooks record its router logits (B*T, k)
        return self.layer(x).output
