"""Data-free expert pruning of Hugging Face MoE checkpoints (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Switch).

    from pmoe.hf import PruneSpec, prune_checkpoint
    report = prune_checkpoint("base/", "finetuned/", "pruned/", PruneSpec(keep=6))

`prune_model` does the same for in-memory `transformers` models.
"""
from pmoe.hf.adapters import FAMILIES, Family
from pmoe.hf.disk import prune_checkpoint
from pmoe.hf.memory import prune_model
from pmoe.hf.prune import METHODS, PruneSpec
from pmoe.hf.report import LayerRanking, PruneReport

__all__ = ["FAMILIES", "METHODS", "Family", "LayerRanking", "PruneReport", "PruneSpec", "prune_checkpoint",
           "prune_model"]
