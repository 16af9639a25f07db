"""MoE layers: expert banks (`experts`), routed layers (`moe`), the timm-style FFN (`ffn`), references."""
from pmoe.layers.experts import ConvExperts, MlpExperts, relu_neurons
from pmoe.layers.moe import MoEOutput, PatchMoE, TokenMoE
from pmoe.layers.ffn import MoEMlp

__all__ = ["ConvExperts", "MlpExperts", "relu_neurons", "MoEMlp", "MoEOutput", "PatchMoE", "TokenMoE"]
