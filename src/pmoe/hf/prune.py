"""What to prune: the run's settings, the per-layer ranking of experts, and the resulting tensor plan.

Shared by checkpoint pruning (`pmoe.hf.disk`) and in-memory pruning (`pmoe.hf.memory`); both hand in a
`TensorSource`, which reads router tensors only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import torch

from pmoe.errors import check
from pmoe.hf.adapters import Family, family_of
from pmoe.hf.plan import Slice, expert_count, moe_blocks, plan_tensors
from pmoe.hf.report import LayerRanking
from pmoe.prune.criteria import DATA_FREE, check_ratio, delta_scores, kept_count, router_scorer, select_kept

METHODS = DATA_FREE


@dataclass(frozen=True)
class PruneSpec:
    """How many experts to keep per MoE layer, and by which data-free criterion."""

    keep: int | None = None  # experts kept in every MoE layer, 1..k-1
    ratio: float | None = None  # or: fraction pruned per layer, keep = k - round(ratio * k)
    method: str = "router-norm-change"  # signed router-norm change (paper), or another of METHODS
    layers: tuple[int, ...] | None = None  # MoE layer numbers to prune (natural key order); None: all
    seed: int = 0  # of method "random"

    def __post_init__(self) -> None:
        check((self.keep is None) != (self.ratio is None), "give exactly one of keep and ratio")
        check(self.method in METHODS, f"method {self.method!r} is unknown; expected one of {list(METHODS)}")
        check_ratio(self.ratio)

    def kept_count(self, k: int) -> int:
        """Experts kept per layer out of `k`; PmoeError unless 1..k-1."""
        return kept_count(k, self.keep, self.ratio)


class TensorSource(Protocol):
    """A model's config.json contents, tensor shapes, and a reader of whole tensors."""

    config: dict[str, Any]

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def load(self, key: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class Pruning:
    """The decisions of one run: kept experts per layer, the tensor plan, and the config fields to change."""

    family: Family
    num_experts: int
    keep: int
    layers: list[LayerRanking]
    tensors: dict[str, Slice]  # output key -> its source
    config_changes: dict[str, int]


def _blocks_and_count(family: Family, base: TensorSource, finetuned: TensorSource) -> tuple[list[str], int]:
    """The MoE blocks and expert count, after checking that base and fine-tuned have the same architecture."""
    kinds = base.config.get("model_type"), finetuned.config.get("model_type")
    check(kinds[0] == kinds[1], f"base model_type {kinds[0]!r} differs from fine-tuned {kinds[1]!r}; "
                                "expected two checkpoints of one architecture")
    base_shapes, shapes = base.shapes, finetuned.shapes
    blocks, base_blocks = moe_blocks(family, shapes), moe_blocks(family, base_shapes)
    check(base_blocks == blocks, f"base MoE layers {base_blocks} differ from fine-tuned {blocks}; expected the same")
    k, base_k = expert_count(family, shapes, blocks), expert_count(family, base_shapes, blocks)
    check(base_k == k, f"base has {base_k} experts per MoE layer, fine-tuned {k}; expected the same expert count")
    for key in (key for key in shapes if key in base_shapes):
        b, f = tuple(base_shapes[key]), tuple(shapes[key])
        check(b == f, f"{key} has shape {list(b)} in base but {list(f)} in fine-tuned; expected equal shapes")
    return blocks, k


def _check_layers(layers: tuple[int, ...] | None, blocks: list[str], family: Family) -> None:
    if layers is None:
        return
    n = len(blocks)
    bad = sorted(i for i in set(layers) if not 0 <= i < n)
    check(not bad, f"layers {bad} are outside 0..{n - 1}; expected numbers of the {n} MoE layers")
    check(len(set(layers)) == n, f"layers {sorted(set(layers))} select {len(set(layers))} of {n} MoE layers, but "
                                 f"{family.model_type} keeps one expert count for all layers in config.json, so the "
                                 f"result would not load; expected all of 0..{n - 1}")


def plan_pruning(base: TensorSource, finetuned: TensorSource, spec: PruneSpec) -> Pruning:
    """Rank the experts of every MoE layer from the two models' routers and plan the pruned tensors."""
    family = family_of(finetuned.config)
    blocks, k = _blocks_and_count(family, base, finetuned)
    keep = spec.kept_count(k)
    _check_layers(spec.layers, blocks, family)
    score = router_scorer(spec.method, spec.seed)
    layers = []
    for block in blocks:
        b, f = base.load(family.router_key(block)), finetuned.load(family.router_key(block))
        scores = score(b, f)
        layers.append(LayerRanking(block, delta_scores(b, f).tolist(), scores.tolist(), select_kept(scores, keep)))
    plan = plan_tensors(family, finetuned.shapes, {layer.name: layer.kept for layer in layers}, k)
    return Pruning(family, k, keep, layers, plan, family.config_changes(finetuned.config, k, keep))
