"""Data-driven expert scores, from one pass over calibration data with forward hooks on the routed layers.

Per MoE layer and expert s, over the calibration tokens (patches; E³: every member's copy):
* `frequency`: share of the tokens routed to s (dropped choices not counted);
* `gate-mass`: sum of the gates s received, per token (V-MoE's importance, over the gates actually applied);
* `saliency`: mean, over the tokens routed to s, of gate × ‖output of expert s‖₂ (REAP).
Under per-sample expert choice every expert takes l of the n patches of every sample, so `frequency` ties (l/n for
all), and so does `gate-mass` with `softmax_selected` or `hard` gates (the l gates of an expert sum to 1, or l).
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Iterable

import torch
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers import PatchMoE
from pmoe.layers.routing import PatchRouting, TokenRouting


class LayerUsage:
    """Sums of one routed layer over the calibration pass; `norms` holds the last bank output's norms."""

    def __init__(self, k: int) -> None:
        self.routed, self.gates, self.salient = (torch.zeros(k, dtype=torch.float64) for _ in range(3))
        self.tokens, self.norms = 0, None

    def bank_hook(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        self.norms = out.detach().to(torch.promote_types(out.dtype, torch.float32)).norm(dim=-1)  # (k, M) per row

    def layer_hook(self, module: nn.Module, args: tuple, out: tuple) -> None:
        r, norms = out.routing, self.norms
        if isinstance(module, PatchMoE) and module.dispatch == "dense":  # every expert ran on every patch: keep the chosen
            B, k, l = r.index.shape
            norms = norms.view(k, B, -1).gather(2, r.index.transpose(0, 1)).reshape(k, B * l)  # (k, B*l)
        tokens, expert, gate, norm = (_choices if isinstance(r, TokenRouting) else _patches)(r, norms)
        expert = expert.cpu()
        for total, w in ((self.routed, torch.ones_like(gate)), (self.gates, gate), (self.salient, gate * norm)):
            total.index_add_(0, expert, w.double().cpu())
        self.tokens += tokens



def frequency(u: LayerUsage) -> Tensor:
    """(k,) share of the calibration tokens routed to each expert."""
    return u.routed / u.tokens


def gate_mass(u: LayerUsage) -> Tensor:
    """(k,) gates each expert received, per calibration token."""
    return u.gates / u.tokens


def saliency(u: LayerUsage) -> Tensor:
    """(k,) mean gate x expert-output norm over the tokens routed to each expert (REAP)."""
    return u.salient / u.routed.clamp(min=1)


def _patches(r: PatchRouting, norms: Tensor) -> tuple[int, Tensor, Tensor, Tensor]:
    """Tokens, and expert, gate and output norm of every (sample, expert, patch) choice, flat.  norms: (k, B*l)."""
    B, k, l = r.index.shape
    expert = torch.arange(k, device=r.index.device).view(1, k, 1).expand(B, k, l)
    norm = norms.view(k, B, l).transpose(0, 1)  # (B, k, l)
    return B * r.scores.shape[1], expert.reshape(-1), r.gates.reshape(-1), norm.reshape(-1)


def _choices(r: TokenRouting, norms: Tensor) -> tuple[int, Tensor, Tensor, Tensor]:
    """Tokens, and expert, gate and output norm of every kept (token, choice), flat.  norms: (k, G*C) buffer rows."""
    G, T, _ = r.expert.shape
    C = r.capacity
    keep = ~r.dropped
    g = torch.arange(G, device=r.expert.device).view(G, 1, 1).expand_as(r.expert)
    row = (r.expert * (G * C) + g * C + r.slot)[keep]  # buffer row of every kept choice
    return G * T, r.expert[keep], r.gates[keep], norms.reshape(-1)[row]


@torch.no_grad()
def layer_usage(model: nn.Module, calib: Iterable[Tensor]) -> list[LayerUsage]:
    """Per MoE layer, its usage over one eval-mode pass of `model` over the input batches `calib` (moved to the
    model's device); the data-driven criteria score experts from it."""
    layers = model.moe_layers()
    tallies = [LayerUsage(layer.num_experts) for layer in layers]
    hooks = [h for layer, t in zip(layers, tallies)
             for h in (layer.experts.register_forward_hook(t.bank_hook), layer.register_forward_hook(t.layer_hook))]
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    batches = 0
    try:
        with ExitStack() as stack:  # the hooks read the bank's outputs: every layer calls its bank
            for layer in layers:
                stack.enter_context(layer.calling_bank())
            for x in calib:
                model(x.to(device))
                batches += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    check(batches > 0, "the calibration data is empty; data-driven criteria need at least one batch")
    return tallies
