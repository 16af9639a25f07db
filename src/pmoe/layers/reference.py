"""Slow but plain implementations of the patch-level MoE layer, for tests and benchmarks.

* `loop_forward`: a per-sample, per-expert Python loop -- the definition of the layer, written out.
* `masked_forward`: the official pMoE code's approach -- every expert runs densely over all n patches and a
  routing mask zeroes what it did not choose. Same result, k*n/(k*l) times the expert compute.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pmoe.layers.moe import PatchMoE


def loop_forward(layer: PatchMoE, x: Tensor) -> Tensor:
    """x: (B, n, d) -> (B, n, d_out) (sum) or (B, n, k*d_out) (concat), one sample and expert at a time."""
    r = layer.route(x)
    B, n, _ = x.shape
    rows = []
    for b in range(B):
        per_expert = []
        for s in range(layer.num_experts):
            idx = r.index[b, s]  # (l,)
            y = layer.experts.forward_expert(s, x[b, idx]) * r.gates[b, s].unsqueeze(-1)  # (l, d_out)
            per_expert.append(torch.zeros(n, y.shape[-1], dtype=y.dtype, device=y.device).index_put((idx,), y))
        rows.append(sum(per_expert) if layer.combine == "sum" else torch.cat(per_expert, dim=-1))
    return torch.stack(rows)


def routing_mask(layer: PatchMoE, x: Tensor) -> Tensor:
    """(B, n, k) gate of patch j for expert s, 0 where s did not choose j."""
    r = layer.route(x)
    mask = torch.zeros_like(r.scores)  # (B, n, k)
    return mask.scatter(1, r.index.transpose(1, 2), r.gates.transpose(1, 2).to(mask.dtype))


def masked_forward(layer: PatchMoE, x: Tensor) -> Tensor:
    """Dense experts over all n patches, weighted by the routing mask (the official code's layer)."""
    B, n, d = x.shape
    k = layer.num_experts
    mask = routing_mask(layer, x)  # (B, n, k)
    y = layer.experts(x.reshape(1, B * n, d).expand(k, B * n, d).contiguous())  # (k, B*n, d_out): all patches
    y = y * mask.permute(2, 0, 1).reshape(k, B * n, 1)
    if layer.combine == "sum":
        return y.sum(dim=0).view(B, n, -1)
    return y.permute(1, 0, 2).reshape(B, n, -1)


def expert_loop_forward(layer: PatchMoE, x: Tensor) -> Tensor:
    """Common PyTorch MoE code: one Python iteration per expert over its gathered patches (sum combine)."""
    r = layer.route(x)
    B, n, d = x.shape
    flat_x = x.reshape(B * n, d)
    out = None
    for s in range(layer.num_experts):
        rows = (r.index[:, s] + torch.arange(B, device=x.device).view(B, 1) * n).reshape(-1)  # (B*l,)
        y = layer.experts.forward_expert(s, flat_x[rows]) * r.gates[:, s].reshape(-1, 1)
        out = (y.new_zeros(B * n, y.shape[-1]) if out is None else out).index_add(0, rows, y)
    return out.view(B, n, -1)
