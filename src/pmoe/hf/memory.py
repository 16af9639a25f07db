"""Prune an in-memory `transformers` model (needs `transformers`; fused expert tensors are sliced on dim 0)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Mapping

import torch

from pmoe.hf.prune import PruneSpec, plan_pruning
from pmoe.hf.report import PruneReport

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class StateDictSource:
    """A `TensorSource` over a state dict."""

    config: dict[str, Any]
    tensors: Mapping[str, torch.Tensor]

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.tensors.items()}

    def load(self, key: str) -> torch.Tensor:
        return self.tensors[key]


def prune_model(base: PreTrainedModel | Mapping[str, torch.Tensor], finetuned: PreTrainedModel,
                spec: PruneSpec) -> tuple[PreTrainedModel, PruneReport]:
    """A pruned copy of `finetuned`, built on the meta device and filled with its (sliced) tensors.

    Args:
        base: the pretrained model, or a state dict holding at least its router tensors.
        finetuned: the fine-tuned model; left unchanged. Tensors that pruning does not slice are shared with it,
            not copied (clone `finetuned` first if both must change independently).
        spec: experts to keep and criterion.
    Returns:
        The pruned model (same class, config with the new expert count) and the report (tensor bytes as size).
    """
    config = finetuned.config.to_dict()
    ft = StateDictSource(config, finetuned.state_dict())
    base_sd = base if isinstance(base, Mapping) else base.state_dict()
    base_config = config if isinstance(base, Mapping) else base.config.to_dict()
    pruning = plan_pruning(StateDictSource(base_config, base_sd), ft, spec)

    state = {key: s.take(ft.tensors[s.source]) for key, s in pruning.tensors.items()}
    new_config = copy.deepcopy(finetuned.config)
    for name, value in pruning.config_changes.items():
        path, _, leaf = name.rpartition(".")
        setattr(getattr(new_config, path) if path else new_config, leaf, value)
    with torch.device("meta"):
        pruned = type(finetuned)(new_config)
    pruned.load_state_dict(state, strict=True, assign=True)
    for name, buffer in finetuned.named_buffers():  # non-persistent buffers (rotary tables) are not in `state`
        module, _, leaf = name.rpartition(".")
        if pruned.get_buffer(name).is_meta:
            pruned.get_submodule(module).register_buffer(leaf, buffer, persistent=False)
    meta = [n for n, t in (*pruned.named_parameters(), *pruned.named_buffers()) if t.is_meta]
    if meta:
        raise RuntimeError(f"pruned model has tensors without data: {meta}")
    pruned.tie_weights()
    pruned.generation_config = copy.deepcopy(finetuned.generation_config)
    pruned.train(finetuned.training)

    moe = pruning.layout.moe
    report = PruneReport(moe.model_type, spec.method, spec.seed, moe.num_experts, pruning.keep, pruning.config_changes,
                         pruning.layers, groups=pruning.groups, protected=sorted(spec.protect),
                         parameters=(finetuned.num_parameters(), pruned.num_parameters()),
                         size_bytes=(finetuned.get_memory_footprint(), pruned.get_memory_footprint()))
    return pruned, report
