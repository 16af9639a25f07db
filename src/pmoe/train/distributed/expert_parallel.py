"""Expert parallelism: each of the E ranks of an EP group holds k/E of every routed layer's experts.

A routed layer calls its bank on xe (k, M, d), row block s being what expert s takes from this rank's batch. Every
expert gets exactly M rows on every rank (B_local · l with per-sample expert choice, G_local · C slots with token
choice), so the exchange is one fixed-size all-to-all each way, with no count exchange and no host sync:
  xe (k, M, d) = (E, k/E, M, d) -> all-to-all -> (E, k/E, M, d), block j from EP rank j -> local bank on
  (k/E, E·M, d) -> (k/E, E·M, d_out) -> (E, k/E, M, d_out) -> all-to-all -> (k, M, d_out).
Both exchanges are autograd-capable (each one's backward is the other), so on the rank holding expert s the bank's
gradient already sums every EP peer's loss. Routers, gates and the combine stay local and the layers untouched: as
torchtitan's partition / dispatch / combine, the sliced bank keeps its parameter names and runs the exchange in
forward hooks. Expert s lives on EP rank ⌊s·E/k⌋; a zero-mode pruned layer shares its k' kept experts the same way.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn
from torch.distributed import ProcessGroup

from pmoe.errors import check
from pmoe.prune.surgery import slice_bank


def all_to_all(x: Tensor, group: ProcessGroup) -> Tensor:
    """x (E, ...) -> (E, ...): block i goes to rank i of `group`; block j of the result came from rank j."""
    return funcol.all_to_all_single_autograd(x.contiguous(), None, None, group)


class ExpertExchange:
    """The forward hooks that make a bank holding k/E experts stand for the whole bank of k across its EP group."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group, self.size = group, dist.get_world_size(group)

    def dispatch(self, bank: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor]:
        """xe (k, M, d) routed rows -> (k/E, E·M, d): the rows this rank's experts got from each EP rank. Rows that
        every expert sees, (M, d) (PatchMoE's dense dispatch), -> (E·M, d)."""
        x, E = args[0], self.size
        if x.dim() == 2:
            return (all_to_all(x.expand(E, *x.shape), self.group).flatten(0, 1),)
        k, M, d = x.shape
        got = all_to_all(x.view(E, k // E, M, d), self.group)  # (E, k/E, M, d): block j from EP rank j
        return (got.transpose(0, 1).reshape(k // E, E * M, d),)

    def combine(self, bank: nn.Module, args: tuple[Tensor, ...], y: Tensor) -> Tensor:
        """y (k/E, E·M, d_out) -> (k, M, d_out): every EP rank gets back what every expert made of its rows."""
        E = self.size
        k_local, EM, d_out = y.shape
        send = y.view(k_local, E, EM // E, d_out).transpose(0, 1)  # (E, k/E, M, d_out): block j for EP rank j
        return all_to_all(send, self.group).reshape(E * k_local, EM // E, d_out)


def banks(model: nn.Module) -> list[nn.Module]:
    """The expert banks of `model`'s routed layers, in depth order."""
    return [layer.experts for layer in model.moe_layers()]


def sharded_banks(model: nn.Module, ep: int) -> list[nn.Module]:
    """The banks whose experts `shard_experts` shares out over EP groups of `ep` ranks: all, or none when ep = 1."""
    return banks(model) if ep > 1 else []


def expert_params(model: nn.Module, ep: int) -> list[nn.Parameter]:
    """The parameters of the sharded banks: each rank holds other ones (kept out of DDP and FSDP2)."""
    return [p for bank in sharded_banks(model, ep) for p in bank.parameters()]


def check_shardable(model: nn.Module, ep: int) -> None:
    """PmoeError unless `ep` divides the experts of every routed layer of `model` (k'; kept after pruning) and, with
    ep > 1, every layer calls its bank (the exchange hooks it; `PatchMoE(dispatch="fused")` runs it in kernels)."""
    for i, layer in enumerate(model.moe_layers()):
        k = layer.experts.num_experts
        kind = "experts" if layer.kept is None else f"experts kept (of {layer.num_experts}) by zero-mode pruning"
        check(k % ep == 0, f"MoE layer {i} has {k} {kind}; --expert-parallel {ep} must divide that number, so "
                           "that each EP rank holds the same number of experts")
        check(ep == 1 or layer.calls_bank(),
              f"MoE layer {i} runs its experts in fused kernels (dispatch='fused'), which expert parallelism cannot "
              "exchange rows for; use dispatch='gather' (the same values) with --expert-parallel > 1")


def shard_experts(model: nn.Module, group: ProcessGroup) -> None:
    """Keep on this rank only its k/E experts of every routed layer of `model` (in place), exchanging rows with the
    other ranks of `group` in every forward. With E = 1 every rank holds every expert: nothing changes (the
    exchange would only copy the rows, ~5% of a ViT-B-sized layer's time on an H200)."""
    E, e, exchange = dist.get_world_size(group), dist.get_rank(group), ExpertExchange(group)
    check_shardable(model, E)
    for bank in sharded_banks(model, E):
        k = bank.num_experts
        slice_bank(bank, torch.arange(e * k // E, (e + 1) * k // E, device=next(bank.parameters()).device))
        bank.num_experts = k  # the layer sizes its buffers by the whole bank, which this shard stands for
        bank.register_forward_pre_hook(exchange.dispatch)
        bank.register_forward_hook(exchange.combine)


def expert_names(model: nn.Module, ep: int) -> set[str]:
    """Names in `model.state_dict()` of the sharded banks' tensors of >= 1 dim: split along dim 0 over EP ranks."""
    ids = {id(b) for b in sharded_banks(model, ep)}
    return {f"{prefix}.{key}" for prefix, m in model.named_modules() if id(m) in ids
            for key, t in m.state_dict().items() if t.dim() > 0}
