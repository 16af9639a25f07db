"""One interface to every criterion: `score_experts(method, finetuned, pretrained, calib)` -> a score per expert of
every MoE layer; `choose_kept` turns scores into the experts each layer keeps.

Data-free methods (`pmoe.prune.criteria`) read the routers of the two models and nothing else: no data, no forward
pass. Data-driven ones (`pmoe.prune.usage`) make one pass of the fine-tuned model over calibration batches.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers import RoutedLayer
from pmoe.models import MoEModel
from pmoe.prune.criteria import KeepSpec, select_kept
from pmoe.prune.registry import criterion, router_scorer
from pmoe.prune.usage import layer_usage


def _layers(model: MoEModel, what: str) -> list[RoutedLayer]:
    layers = model.moe_layers()
    check(len(layers) > 0, f"the {what} model ({type(model).__name__}) has no MoE layer to prune")
    for i, layer in enumerate(layers):
        check(layer.kept is None and layer.experts.num_experts == layer.num_experts,
              f"MoE layer {i} of the {what} model is pruned already; give the unpruned {what} model")
    return layers


def check_pair(finetuned: nn.Module, pretrained: nn.Module) -> None:
    """PmoeError naming the first difference between the two models' routed structure: architecture, number of
    MoE layers, layer kinds, expert counts, router shapes."""
    a, b = type(finetuned).__name__, type(pretrained).__name__
    check(a == b, f"the fine-tuned model is a {a}, the pretrained one a {b}; expected one architecture")
    fl, pl = _layers(finetuned, "fine-tuned"), _layers(pretrained, "pretrained")
    check(len(fl) == len(pl), f"the fine-tuned model has {len(fl)} MoE layers, the pretrained one {len(pl)}")
    for i, (f, p) in enumerate(zip(fl, pl)):
        what = f"MoE layer {i}"
        check(type(f) is type(p), f"{what} is a {type(f).__name__} when fine-tuned, a {type(p).__name__} pretrained")
        check(f.num_experts == p.num_experts,
              f"{what} has {f.num_experts} experts when fine-tuned, {p.num_experts} pretrained")
        fs, ps = tuple(f.router.weight.shape), tuple(p.router.weight.shape)
        check(fs == ps, f"{what}: router weight {list(fs)} when fine-tuned, {list(ps)} pretrained")


def score_experts(method: str, finetuned: nn.Module, pretrained: nn.Module | None = None,
                  calib: Iterable[Tensor] | None = None, seed: int = 0) -> list[Tensor]:
    """Per MoE layer of `finetuned.moe_layers()`, a (k,) score per expert; larger = more worth keeping.

    Args:
        method: one of `pmoe.prune.registry.METHODS`: `router-norm-change` (Δ_s = ‖w_s^(T)‖ − ‖w_s^(0)‖, the paper's),
            `router-norm-change-abs` (|Δ_s|), `router-delta-norm` (‖w_s^(T) − w_s^(0)‖), `router-norm` (‖w_s^(T)‖),
            `random` (seeded), `frequency`, `gate-mass`, `saliency` (see `pmoe.prune.usage`).
        pretrained: the model `finetuned` was fine-tuned from (the first three methods need it).
        calib: batches of model inputs, for the data-driven methods only; data-free ones never touch it.
        seed: of `random`.
    """
    c = criterion(method)
    layers = _layers(finetuned, "fine-tuned")
    if pretrained is not None:
        check_pair(finetuned, pretrained)
    if c.needs_data:
        check(calib is not None, f"method {method!r} scores experts on calibration data; none was given")
        return [c.score(u) for u in layer_usage(finetuned, calib)]
    check(pretrained is not None or not c.needs_pretrained,
          f"method {method!r} compares the fine-tuned routers with the pretrained ones; give the pretrained model")
    bases = pretrained.moe_layers() if pretrained is not None else layers
    score = router_scorer(method, seed)
    return [score(b.router.weight.detach(), f.router.weight.detach()) for b, f in zip(bases, layers)]


def choose_kept(scores: Sequence[Tensor], layers: Sequence[RoutedLayer], keep: int | None = None,
                ratio: float | None = None) -> list[list[int]]:
    """Per layer, the ascending ids of the experts with the largest scores: `keep` of them, or `k − round(ratio·k)`.

    Every layer keeps the same count (the paper's rule). An E³ layer of M member groups ranks within each group and
    keeps the same count in every group (keep/M, or e − round(ratio·e) of its e = k/M), so it stays an ensemble.
    """
    spec, out = KeepSpec(keep, ratio), []
    for i, (s, layer) in enumerate(zip(scores, layers)):
        M = layer.groups
        e = len(s) // M
        n = spec.count(len(s), M, f"MoE layer {i}")
        out.append([m * e + j for m in range(M) for j in select_kept(s[m * e:(m + 1) * e], n)])
    return out
