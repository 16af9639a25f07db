"""Routed MoE layers: a router, a bank of experts, and static-shape gather -> batched experts -> scatter.

`PatchMoE` is pMoE's layer (per-sample expert choice, every expert takes l patches of every sample);
`TokenMoE` is V-MoE's (every token takes its top-K experts, capacity per expert, batch-prioritized routing).
Both implement `RoutedLayer` (`pmoe.layers.base`); expert weights keep a leading expert axis (`pmoe.layers.experts`).

Expert pruning in `zero` mode (`pmoe.prune.surgery`) leaves the router's k rows and slices the bank to the k' kept
experts; the buffer `kept` (k',) then holds their ids. Routing runs over all k experts as before, and only the kept
ones compute: what the others were sent is lost (V-MoE's pruned experts contribute zero). `kept` is None unpruned.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers.base import RoutedLayer, check_tokens
from pmoe.layers.experts import MlpExperts
from pmoe.layers.fused import fusable, fused_experts, runs_fused
from pmoe.layers.routing import GateMode, PatchRouting, TokenRouting, expert_choice, token_choice


# Summing rows into a (N, d) tensor: on CUDA, index_select's backward and index_add_ add with atomics, while
# indexing's backward and index_put_(accumulate=True) sort the rows and sum each run without them. On the H200 (bf16,
# BENCHMARKS.md) the atomic sum of PatchMoE's k*B*l = 100352 rows of 768 took 640 us at ViT-B size, and gathering and
# scattering by sorting made the layer 7-13% faster (eager and compiled); at ViT-S size (19M elements) and below
# sorting made it slower (ViT-S bf16: 2.38 against 2.24 ms fwd+bwd for the scatter; the gather's sorted backward
# alone cost ViT-MoE-S training 7-17% eager). On CPU index_select and index_add_ (a serial loop) are the faster pair.
SORTED_SCATTER_MIN = 1 << 25  # elements from which a CUDA gather's backward and scatter sort (ViT-B: 77M)
DISPATCHES = ("gather", "dense", "fused")  # PatchMoE's ways to run its experts (see its docstring)


def _sorted_scatter(device: torch.device, numel: int) -> bool:
    """Whether to sum `numel` scattered elements on `device` by sorting (see SORTED_SCATTER_MIN)."""
    return device.type == "cuda" and numel >= SORTED_SCATTER_MIN


def _gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """x (N, d), rows (M,) -> x[rows] (M, d); the backward sums the gradients of repeated rows."""
    return x[rows] if _sorted_scatter(x.device, rows.numel() * x.shape[1]) else x.index_select(0, rows)


def _scatter_rows(src: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    """src (M, d), rows (M,) -> (num_rows, d) zeros with src[i] added to row rows[i]."""
    out = src.new_zeros(num_rows, src.shape[1])
    if _sorted_scatter(src.device, src.numel()):  # the rows are in range by construction: no checking host sync
        return torch.ops.aten._unsafe_index_put(out, [rows], src, True)
    return out.index_add_(0, rows, src)


def _dispatch_dtype(x: Tensor) -> Tensor:
    """Under autocast, gather in the autocast dtype: the experts would cast the gathered copy anyway."""
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


class PatchMoE(RoutedLayer):
    """pMoE layer: expert s processes only the l patches of each sample it chose; the rest of its work is skipped.

    Args:
        experts: a bank mapping (k, M, d) -> (k, M, d_out).
        l: patches per expert per sample; or None with `num_selected`.
        num_selected: K instead of a fixed l: every expert takes l = ceil(n*K/k) of the n patches of each sample,
            so a patch gets K experts on average (ViT-MoE's patch router); computed per call from n and k.
        gate: `softmax_selected` | `softmax_all` | `hard` (see `pmoe.layers.routing.expert_choice`).
        combine: `sum` adds the gated expert outputs of a patch (standard MoE, output (B, n, d_out));
            `concat` puts expert s's output in channel block s (WRN-pMoE, output (B, n, k*d_out)).
        router_std: std of the router's normal init.
        dispatch: `gather` copies each expert's l patches and runs the experts on them (k*l/n of the dense
            compute); `dense` runs every expert on every patch, the first layers as one GEMM, and keeps the chosen
            outputs (banks that accept shared (M, d) rows: MlpExperts). Same values; `dense` is faster when experts
            are tiny (the theory's m=5 neurons on CPU: one well-shaped GEMM that reads each patch once). `fused`
            gathers, gates and sums inside Triton GEMM kernels (`pmoe.layers.fused`; MlpExperts with GELU or ReLU,
            no dropout, combine `sum`; bf16/fp16 on CUDA); where they do not run (CPU, fp32), it gathers.
    """

    def __init__(self, experts: nn.Module, l: int | None = None, gate: GateMode = "softmax_selected",
                 combine: str = "sum", router_std: float = 0.02, dispatch: str = "gather", *,
                 num_selected: int | None = None) -> None:
        check(combine in ("sum", "concat"), f"combine must be 'sum' or 'concat', got {combine!r}")
        check(dispatch in DISPATCHES, f"dispatch must be one of {DISPATCHES}, got {dispatch!r}")
        check(dispatch != "dense" or isinstance(experts, MlpExperts),
              f"dispatch='dense' needs MlpExperts (shared rows), got {type(experts).__name__}")
        check((l is None) != (num_selected is None),
              f"give one of l (patches per expert) and num_selected (experts per patch), got l={l}, "
              f"num_selected={num_selected}")
        check(l is None or l >= 1, f"l (patches per expert) must be >= 1, got {l}")
        k = experts.num_experts
        check(num_selected is None or 1 <= num_selected <= k, f"num_selected must be in 1..{k}, got {num_selected}")
        super().__init__(experts, router_std)
        self.l, self.num_selected, self.gate, self.combine, self.dispatch = l, num_selected, gate, combine, dispatch
        self._check_fused()

    def _check_fused(self) -> None:
        """PmoeError if the dispatch is `fused` and the kernels cannot compute this layer (at init and every call:
        the bank and the combine are plain attributes)."""
        check(self.dispatch != "fused" or (fusable(self.experts) and self.combine == "sum"),
              f"dispatch='fused' needs MlpExperts with GELU or ReLU, no dropout, and combine='sum'; got "
              f"{type(self.experts).__name__} with combine={self.combine!r}")

    def calls_bank(self) -> bool:
        """The fused kernels read the bank's weights and never call it."""
        return self.dispatch != "fused"

    @contextmanager
    def calling_bank(self) -> Iterator[None]:
        """A fused layer gathers while inside (the same values)."""
        dispatch = self.dispatch
        self.dispatch = "gather" if dispatch == "fused" else dispatch
        try:
            yield
        finally:
            self.dispatch = dispatch

    def patches_per_expert(self, n: int) -> int:
        """l for samples of n patches: the fixed l, or ceil(n*K/k) (at most n)."""
        if self.num_selected is None:
            return self.l
        return min(n, (n * self.num_selected + self.num_experts - 1) // self.num_experts)

    def route(self, x: Tensor) -> PatchRouting:
        """x: (B, n, d) -> each expert's top-l patches per sample."""
        check_tokens(x, self.in_features)
        return expert_choice(self.router(x), self.patches_per_expert(x.shape[1]), self.gate)

    def compute(self, x: Tensor, routing: PatchRouting) -> Tensor:
        """x: (B, n, d) -> (B, n, d_out) [or (B, n, k*d_out) for concat]."""
        index, gates = routing.index, routing.gates  # (B, k, l)
        if self.kept is not None:  # zero-mode pruning: only the kept experts compute
            index, gates = index[:, self.kept], gates[:, self.kept]  # (B, k', l)
        B, n, d = x.shape
        k, l = index.shape[1:]
        rows = _expert_rows(index, n)  # (k*B*l,)
        self._check_fused()
        x = _dispatch_dtype(x)
        if self.dispatch == "fused" and runs_fused(x) and x.numel() > 0:
            gates = gates.transpose(0, 1).reshape(k * B * l)  # expert-major, as rows
            out = fused_experts(self.experts, x.reshape(B * n, d), rows, gates)  # (B*n, d_out)
            return out.view(B, n, out.shape[-1])
        if self.dispatch != "dense":
            xe = _gather_rows(x.reshape(B * n, d), rows).view(k, B * l, d)
            ye = self.experts(xe)  # (k, B*l, d_out)
        else:
            y_all = self.experts(x.reshape(B * n, d))  # (k, B*n, d_out): every expert on every patch
            ye = y_all.gather(1, rows.view(k, B * l, 1).expand(-1, -1, y_all.shape[-1]))  # (k, B*l, d_out)
        d_out = ye.shape[-1]
        # gates (B, k, l) broadcast as a (k, B, l, 1) view: no reordered copy of them
        ye = (ye.view(k, B, l, d_out) * gates.transpose(0, 1).unsqueeze(-1).to(ye.dtype)).reshape(k * B * l, d_out)
        if self.combine == "sum":
            return _scatter_rows(ye, rows, B * n).view(B, n, d_out)
        # concat: expert s writes channel block s of its patches (a pruned expert's block stays 0)
        K = self.num_experts
        block = torch.arange(k, device=x.device) if self.kept is None else self.kept  # (k,)
        blocks = (rows.view(k, B * l) * K + block.view(k, 1)).view(-1)  # (k*B*l,) rows of (B*n*K, d_out)
        return _scatter_rows(ye, blocks, B * n * K).view(B, n, K * d_out)


def _expert_rows(index: Tensor, n: int) -> Tensor:
    """index (B, k, l) patches of each sample -> (k*B*l,) their rows in the (B*n, d) patches, expert-major and
    contiguous (made once: the gather and the scatter share it)."""
    B = index.shape[0]
    return (index + torch.arange(0, B * n, n, device=index.device).view(B, 1, 1)).transpose(0, 1).reshape(-1)


class TokenMoE(RoutedLayer):
    """V-MoE layer: top-K experts per token, at most `capacity` tokens per expert and group, BPR.

    Tokens are routed in groups: of `group_size` tokens, or of the n tokens of `group_images` samples (vmoe's
    ViT-MoE: 8 images; a batch of B samples that is no multiple of it routes groups of gcd(B, group_images)), by
    default of one sample's n tokens. Capacity and the balancing losses act per group: with one sample a group, every
    sample spreads its tokens over the experts, and no expert can take a kind of samples. Dropped choices contribute
    nothing (the block's residual carries the token). Aux loss = w_imp * importance + w_load * load.
    """

    def __init__(self, experts: nn.Module, num_selected: int = 2, capacity_factor: float = 1.05,
                 eval_capacity_factor: float = 1.5, batch_priority: bool = True, noise_std: float | None = None,
                 group_size: int | None = None, importance_weight: float = 0.005, load_weight: float = 0.005,
                 router_std: float = 0.02, *, group_images: int = 1) -> None:
        k = experts.num_experts
        check(1 <= num_selected <= k, f"num_selected must be in 1..{k}, got {num_selected}")
        check(group_images >= 1 and (group_size is None or group_images == 1),
              f"give group_size (tokens) or group_images (samples) >= 1, not both; got {group_size}, {group_images}")
        super().__init__(experts, router_std)
        self.num_selected = num_selected
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.batch_priority, self.group_size, self.group_images = batch_priority, group_size, group_images
        self.noise_std = 1.0 / k if noise_std is None else noise_std
        self.importance_weight, self.load_weight = importance_weight, load_weight

    def route(self, x: Tensor) -> TokenRouting:
        """x: (B, n, d) -> routing of G = B*n/group_size groups."""
        check_tokens(x, self.in_features)
        B, n, d = x.shape
        T = self.group_size or self.images_per_group(B) * n
        check((B * n) % T == 0, f"group_size={T} must divide the B*n={B * n} tokens")
        return self.choose(self.router(x.reshape(-1, T, d)))  # logits (G, T, k)

    def images_per_group(self, B: int) -> int:
        """Samples of a routing group in a batch of B: group_images, or gcd(B, group_images) if B is no multiple."""
        return math.gcd(B, self.group_images)

    def choose(self, logits: Tensor) -> TokenRouting:
        """Token choice of router logits (G, T, k) with this mode's capacity and noise (training or evaluation)."""
        c = self.capacity_factor if self.training else self.eval_capacity_factor
        noise = self.noise_std if self.training else 0.0
        return token_choice(logits, self.num_selected, c, self.batch_priority, noise)

    def aux_loss(self, routing: TokenRouting) -> Tensor:
        """() w_imp * importance loss + w_load * load loss."""
        return self.importance_weight * routing.importance_loss + self.load_weight * routing.load_loss

    def compute(self, x: Tensor, routing: TokenRouting) -> Tensor:
        """x: (B, n, d) -> (B, n, d_out): each token's kept choices, gated and summed."""
        r, (B, n, d) = routing, x.shape
        G, T, K = r.expert.shape
        expert, dropped, gates = r.expert, r.dropped, r.gates  # (G, T, K)
        if self.kept is not None:  # zero-mode pruning: choices of removed experts are dropped, the rest renumbered
            bank_id = torch.full((self.num_experts,), -1, device=x.device).index_copy_(
                0, self.kept, torch.arange(len(self.kept), device=x.device))  # (k,): -1 for removed experts
            expert = bank_id[expert]
            dropped = dropped | (expert < 0)
            gates = gates.masked_fill(dropped, 0.0)
        k, C = self.experts.num_experts, r.capacity
        g = torch.arange(G, device=x.device).view(G, 1, 1)
        # Buffer row of every choice, expert-major: (e, g, c) -> e*G*C + g*C + c; dropped -> k*G*C (a spare entry).
        row = torch.where(dropped, k * G * C, expert * (G * C) + g * C + r.slot).reshape(-1)  # (G*T*K,)
        token = (torch.arange(G * T, device=x.device).view(G, T, 1).expand(G, T, K)).reshape(-1)
        # Token and gate of every buffer slot. Empty slots take gate 0 and any token, spread over all of them (their
        # outputs add nothing; spread, the row sums do not queue on one row).
        src = torch.arange(k * G * C + 1, device=x.device) % (G * T)
        src.scatter_(0, row, token)  # kept slots are unique; dropped ones all land on the spare last entry
        slot_gate = gates.new_zeros(k * G * C + 1).scatter(0, row, gates.reshape(-1))[:-1]  # (k*G*C,)
        xe = _gather_rows(_dispatch_dtype(x).reshape(G * T, d), src[:-1]).view(k, G * C, d)  # (k, G*C, d)
        ye = self.experts(xe).reshape(k * G * C, -1)  # (k*G*C, d_out)
        return _scatter_rows(ye * slot_gate.unsqueeze(-1).to(ye.dtype), src[:-1], G * T).view(B, n, -1)
