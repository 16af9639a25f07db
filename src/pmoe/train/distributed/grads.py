"""What ranks keep in step after a backward: gradients, and the batch-norm statistics recomputed for evaluation.

Dense gradients are averaged over the world by DDP or FSDP2 (`pmoe.train.distributed.wrap`). Expert gradients are summed
over the dp group and divided by the world size: a rank's loss is the mean over its B/W samples and the run's loss
the mean of the W ranks' losses; the all-to-all's backward already sums, on the rank holding expert s, the gradients
of its EP peers' losses, the sum over dp adds the other rows of the mesh, and / W gives the run's gradient. (gloo has
no PREMUL_SUM, so FSDP2's gradient divide factor cannot do it; torchtitan and DeepSpeed scale the same way.)
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from pmoe.train.distributed.expert_parallel import banks
from pmoe.train.distributed.mesh import Parallel
from pmoe.train.batchnorm import batch_norms


def local(tensors: Iterable[Tensor]) -> list[Tensor]:
    """This rank's part of each tensor (an FSDP2 shard's local tensor; a plain tensor as it is)."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def reduce_expert_grads(params: list[nn.Parameter], par: Parallel) -> None:
    """Sum the expert gradients over the dp group and divide them by the world size, in place."""
    grads = [p.grad for p in params if p.grad is not None]
    if par.dp > 1 and grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=par.group("dp"))
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))
    for g in grads:
        g.div_(par.world)


@torch.no_grad()
def clip_grad_norm(dense: list[nn.Parameter], experts: list[nn.Parameter], max_norm: float, par: Parallel) -> Tensor:
    """Clip every gradient by the run's global norm over the dense parameters (replicated by DDP, or FSDP2 shards)
    and the experts of the EP group; returns that norm."""
    norm = nn.utils.get_total_norm([p.grad for p in dense if p.grad is not None])
    norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
    expert_sq = nn.utils.get_total_norm([p.grad for p in experts if p.grad is not None]).to(norm.device) ** 2
    dist.all_reduce(expert_sq, group=par.group("ep"))  # each EP rank holds other experts
    total = (norm ** 2 + expert_sq).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as nn.utils.clip_grads_with_norm_
    for g in local(p.grad for p in dense + experts if p.grad is not None):
        g.mul_(scale)
    return total


def average_batch_norms(model: nn.Module, par: Parallel) -> None:
    """Average the running statistics of `model`'s batch norms over the ranks that hold the same ones: the dense
    ones over the world, the experts' (WRN-pMoE) over the dp group (each EP rank holds other experts)."""
    experts = {id(m) for bank in banks(model) for m in bank.modules()}
    for bn in batch_norms(model):
        group, size = (par.group("dp"), par.dp) if id(bn) in experts else (dist.group.WORLD, par.world)
        for t in (bn.running_mean, bn.running_var):
            dist.all_reduce(t, group=group)
            t.div_(size)
