"""Data-free expert pruning of Hugging Face MoE checkpoints of any family, its layout read off the checkpoint.

    from pmoe.hf import PruneSpec, prune_checkpoint
    report = prune_checkpoint("base/", "finetuned/", "pruned/", PruneSpec(keep=6))

`prune_model` does the same for in-memory `transformers` models.
"""
from pmoe.hf.adapters import MoeConfig
from pmoe.hf.disk import prune_checkpoint
from pmoe.hf.layout import discover
from pmoe.hf.memory import prune_model
from pmoe.hf.prune import METHODS, PruneSpec
from pmoe.hf.report import LayerRanking, PruneReport

__all__ = ["METHODS", "LayerRanking", "MoeConfig", "PruneReport", "PruneSpec", "discover", "prune_checkpoint",
           "prune_model"]
