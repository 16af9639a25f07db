"""Expert pruning of fine-tuned pmoe models (Chowdhury et al., ICML 2024).

    from pmoe.prune import choose_kept, prune_model, score_experts
    scores = score_experts("router-norm-change", finetuned, pretrained)       # per MoE layer, (k,) scores
    prune_model(finetuned, choose_kept(scores, finetuned.moe_layers(), ratio=0.5), mode="zero")

Criteria (`criteria`, `usage`, one interface in `scores`), model surgery (`surgery`), cost (`cost`), the data of a
checkpoint (`tasks`), `pmoe prune` (`pipeline.prune_checkpoint`) and `pmoe prune-sweep` (`sweep.prune_sweep`).
"""
from pmoe.prune.scores import METHODS, check_pair, choose_kept, score_experts
from pmoe.prune.surgery import MODES, prune_model

__all__ = ["METHODS", "MODES", "check_pair", "choose_kept", "prune_model", "score_experts"]
