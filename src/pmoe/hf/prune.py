"""What to prune: the run's settings, the per-layer choice of experts, and the resulting tensor plan.

Routing among the kept experts stays exactly what it was with the pruned experts masked out: with grouped routing
(`n_group` groups of consecutive ids, a token confined to `topk_group` of them) every group keeps the same number
of experts, the best of each group; when `topk_group >= n_group` the groups never restrict a token, and the result
is written ungrouped (`n_group = topk_group = 1`) with the best experts overall. Top-K is clamped to the experts a
token can reach. Shared by checkpoint pruning (`pmoe.hf.disk`) and in-memory pruning (`pmoe.hf.memory`); both hand
in a `TensorSource`, which reads router tensors only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import torch

from pmoe.errors import check
from pmoe.hf.adapters import MoeConfig
from pmoe.hf.layout import Layout, discover, find_routers, natural
from pmoe.hf.plan import Slice, plan_tensors
from pmoe.hf.report import LayerRanking
from pmoe.prune.criteria import KeepSpec, delta_scores
from pmoe.prune.registry import DATA_FREE, criterion, router_scorer

METHODS = DATA_FREE


@dataclass(frozen=True)
class PruneSpec:
    """How many experts to keep per MoE layer, by which data-free criterion, and which are never pruned."""

    keep: int | None = None  # experts kept in every MoE layer, 1..k-1
    ratio: float | None = None  # or: fraction pruned per layer, keep = k - round(ratio * k)
    method: str = "router-norm-change"  # signed router-norm change (paper), or another of METHODS
    layers: tuple[int, ...] | None = None  # MoE layer numbers to prune (natural key order); None: all
    seed: int = 0  # of method "random"
    protect: tuple[tuple[int, int], ...] = ()  # (MoE layer number, expert id) pairs always kept

    def __post_init__(self) -> None:
        KeepSpec(self.keep, self.ratio)
        criterion(self.method, METHODS)

    def kept_count(self, k: int) -> int:
        """Experts kept per layer out of `k`; PmoeError unless 1..k-1."""
        return KeepSpec(self.keep, self.ratio).count(k)


class TensorSource(Protocol):
    """A model's config.json contents, tensor shapes, and a reader of whole tensors."""

    config: dict[str, Any]

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def load(self, key: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class Pruning:
    """The decisions of one run: kept experts per layer, the tensor plan, and the config fields to change."""

    layout: Layout
    keep: int
    groups: int  # expert groups after pruning (1: ungrouped)
    layers: list[LayerRanking]
    tensors: dict[str, Slice]  # output key -> its source
    config_changes: dict[str, int]  # dotted config.json path -> new value


def _layout(base: TensorSource, finetuned: TensorSource) -> Layout:
    """The fine-tuned layout, after checking that base has the same architecture."""
    moe, base_moe = MoeConfig.read(finetuned.config), MoeConfig.read(base.config)
    check(moe.model_type == base_moe.model_type, f"base model_type {base_moe.model_type!r} differs from fine-tuned "
                                                 f"{moe.model_type!r}; expected two checkpoints of one architecture")
    check(moe.num_experts == base_moe.num_experts, f"base has {base_moe.num_experts} experts per MoE layer, "
                                                   f"fine-tuned {moe.num_experts}; expected the same expert count")
    base_shapes, shapes = base.shapes, finetuned.shapes
    layout, base_blocks = discover(moe, shapes), sorted(find_routers(base_moe, base_shapes), key=natural)
    check(base_blocks == layout.blocks, f"base MoE layers {base_blocks} differ from fine-tuned {layout.blocks}; "
                                        "expected the same")
    for key in (key for key in shapes if key in base_shapes):
        b, f = tuple(base_shapes[key]), tuple(shapes[key])
        check(b == f, f"{key} has shape {list(b)} in base but {list(f)} in fine-tuned; expected equal shapes")
    return layout


def group_count(moe: MoeConfig, keep: int) -> int:
    """Expert groups to keep `keep / groups` experts in, and to write: 1 if ungrouped or if every token may use
    every group, else `n_group`. PmoeError when grouped routing cannot be preserved."""
    g = moe.num_groups
    if g == 1 or min(moe.topk_group.values(), default=g) >= g:
        return 1
    k = moe.num_experts
    check(k % g == 0, f"{moe.field(next(iter(moe.groups)))}={g} does not divide the {k} experts; expected equal groups")
    check(keep % g == 0 and keep // g >= min(2, k // g),
          f"keep {keep} cannot be split evenly over the {g} expert groups with at least 2 each "
          f"({moe.field(next(iter(moe.groups)))}={g}, topk_group={moe.topk_group}); expected keep a multiple of {g}"
          f" of at least {2 * g}, so that grouped routing is preserved")
    return g


def select_in_groups(scores: torch.Tensor, keep: int, groups: int, protected: set[int], where: str) -> list[int]:
    """The `keep / groups` best of each group of consecutive ids (protected ids first; ties: the lower id).
    `scores` is `[k]`; `where` names the layer in errors."""
    k, quota = scores.shape[0], keep // groups
    size = k // groups
    out: list[int] = []
    for g in range(groups):
        ids = range(g * size, (g + 1) * size)
        safe = [e for e in ids if e in protected]
        check(len(safe) <= quota, f"protected experts {safe} of {where} are more than the {quota} it keeps"
                                  + (f" in group {g}" if groups > 1 else "") + "; expected fewer protected")
        order = torch.sort(scores[g * size:(g + 1) * size], descending=True, stable=True).indices + g * size
        out += safe + [e for e in order.tolist() if e not in protected][:quota - len(safe)]
    return sorted(out)


def _check_layers(layers: tuple[int, ...] | None, n: int) -> None:
    if layers is None:
        return
    bad = sorted(i for i in set(layers) if not 0 <= i < n)
    check(not bad, f"layers {bad} are outside 0..{n - 1}; expected numbers of the {n} MoE layers")
    check(len(set(layers)) == n, f"layers {sorted(set(layers))} select {len(set(layers))} of {n} MoE layers, but "
                                 "config.json keeps one expert count for all layers, so the result would not load; "
                                 f"expected all of 0..{n - 1}")


def _protected(spec: PruneSpec, n: int, k: int) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for layer, expert in spec.protect:
        check(0 <= layer < n and 0 <= expert < k, f"protected {layer}:{expert} is outside the {n} MoE layers x {k} "
                                                  f"experts; expected LAYER in 0..{n - 1} and EXPERT in 0..{k - 1}")
        out.setdefault(layer, set()).add(expert)
    return out


def _router(source: TensorSource, key: str, name: str) -> torch.Tensor:
    """Router weight `key` of `source` (`name` in errors); PmoeError unless floating-point (an integer router would
    be ranked through a cast; other integer tensors are copied or sliced bit-exact) and finite (NaN norms rank
    nothing)."""
    w = source.load(key)
    check(w.is_floating_point(), f"{name} router {key} has dtype {w.dtype}; expected a floating-point router "
                                 "(ranking an integer one would need a cast)")
    bad = int((~torch.isfinite(w)).sum())
    check(not bad, f"{name} router {key} has {bad:,} NaN or infinite entries of {w.numel():,}: its experts cannot be "
                   "ranked; use a checkpoint of a run that converged")
    return w


def plan_pruning(base: TensorSource, finetuned: TensorSource, spec: PruneSpec) -> Pruning:
    """Rank the experts of every MoE layer from the two models' routers and plan the pruned tensors."""
    layout = _layout(base, finetuned)
    moe, n = layout.moe, len(layout.blocks)
    keep = spec.kept_count(moe.num_experts)
    _check_layers(spec.layers, n)
    groups = group_count(moe, keep)
    protected = _protected(spec, n, moe.num_experts)
    score = router_scorer(spec.method, spec.seed)
    layers = []
    for i, block in enumerate(layout.blocks):
        key = layout.routers[block]
        # zero-compute rows are not ranked
        b, f = (_router(src, key, name)[:moe.num_experts] for src, name in ((base, "base"), (finetuned, "fine-tuned")))
        scores = score(b, f)
        kept = select_in_groups(scores, keep, groups, protected.get(i, set()), f"MoE layer {i} ({block})")
        layers.append(LayerRanking(block, delta_scores(b, f).tolist(), scores.tolist(), kept))
    plan = plan_tensors(layout, finetuned.shapes, {layer.name: layer.kept for layer in layers})
    reachable = keep if groups == 1 else min(moe.topk_group.values()) * keep // groups
    return Pruning(layout, keep, groups, layers, plan, moe.changes(keep, groups, reachable))
