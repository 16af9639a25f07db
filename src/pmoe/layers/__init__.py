"""MoE layers: routing (`routing`), expert banks (`experts`), the routed-layer contract (`base`), routed layers
(`moe`, `ensemble`), the timm-style FFN (`ffn`), a transformers block adapter (`hf_block`), plain references
(`reference`).

    layer = PatchMoE(MlpExperts(8, 192, 768), l=16)      # or TokenMoE(...); (B, n, d) -> MoEOutput
    mlp = functools.partial(MoEMlp, num_experts=8)        # timm's `mlp_layer`: (B, n, d) -> (B, n, d)
    loss = task_loss + collect_aux_loss(model)            # after the forward of any model holding routed layers
"""
from pmoe.layers.base import MoEOutput, RoutedLayer, Routing, collect_aux_loss, routed_layers
from pmoe.layers.ensemble import EnsembleTokenMoE
from pmoe.layers.experts import ConvExperts, MlpExperts, relu_neurons
from pmoe.layers.ffn import MoEMlp
from pmoe.layers.hf_block import HFMoEBlock
from pmoe.layers.moe import PatchMoE, TokenMoE
from pmoe.layers.routing import (GATE_MODES, GateMode, PatchRouting, TokenRouting, expert_capacity, expert_choice,
                                 token_choice)

__all__ = ["ConvExperts", "EnsembleTokenMoE", "GATE_MODES", "GateMode", "HFMoEBlock", "MlpExperts", "MoEMlp",
           "MoEOutput", "PatchMoE", "PatchRouting", "RoutedLayer", "Routing", "TokenMoE", "TokenRouting",
           "collect_aux_loss", "expert_capacity", "expert_choice", "relu_neurons", "routed_layers", "token_choice"]
