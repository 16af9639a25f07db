"""Expert pruning of fine-tuned pmoe models (Chowdhury et al., ICML 2024).

    from pmoe.prune import choose_kept, prune_model, score_experts
    scores = score_experts("router-norm-change", finetuned, pretrained)       # per MoE layer, (k,) scores
    prune_model(finetuned, choose_kept(scores, finetuned.moe_layers(), ratio=0.5), mode="zero")

The core, which needs only the routed layers and models: criteria (`criteria`, `usage`; all listed in `registry`;
one interface in `scores`), model surgery (`surgery`), cost (`cost`). The workflows over checkpoints (`pmoe prune`, `pmoe prune-sweep`) are
`pmoe.runs.prune` and `pmoe.runs.prune_sweep`.
"""
from pmoe.prune.criteria import KeepSpec
from pmoe.prune.registry import CRITERIA, METHODS, Criterion
from pmoe.prune.scores import check_pair, choose_kept, score_experts
from pmoe.prune.surgery import MODES, prune_model

__all__ = ["CRITERIA", "METHODS", "MODES", "Criterion", "KeepSpec", "check_pair", "choose_kept", "prune_model",
           "score_experts"]
