"""The model a rank trains: a copy of the run's model on the rank's device, rank 0's weights, only the rank's
experts (`shard_experts`), wrapped so that DDP or FSDP2 averages the dense gradients over the world.

Expert parameters and buffers stay out of both wrappers: each EP rank holds other experts (`pmoe.train.distributed.grads`
reduces their gradients). The wrapper wraps the training step's `Objective`, so that E³'s training forward
(`forward_members`) goes through it too.
"""
from __future__ import annotations

import copy

import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from pmoe.train.distributed.expert_parallel import expert_params, shard_experts, sharded_banks
from pmoe.train.distributed.mesh import Parallel
from pmoe.models.vit import Block as ViTBlock
from pmoe.models.wrn import Block as WRNBlock
from pmoe.train.vision import Objective

FSDP_UNITS = (ViTBlock, WRNBlock)  # each gathered for its own forward and backward only; the rest at the root


def rank_model(model: nn.Module, par: Parallel) -> nn.Module:
    """A copy of `model` on this rank's device with rank 0's weights and buffers, holding only this rank's experts."""
    local = copy.deepcopy(model).to(par.device)
    for t in local.state_dict().values():
        dist.broadcast(t, src=0)
    shard_experts(local, par.group("ep"))
    return local


def wrap(objective: Objective, par: Parallel) -> nn.Module:
    """`objective` with its dense parameters averaged over the world after every backward: by FSDP2 if `par.fsdp`
    (each block sharded, then the rest; in place), by DDP otherwise. The sharded experts' parameters and buffers are
    left out."""
    sharded = sharded_banks(objective.model, par.ep)
    experts = {id(t) for bank in sharded for t in (*bank.parameters(), *bank.buffers())}
    if par.fsdp:
        mesh, ignored = init_device_mesh(par.device.type, (par.world,)), set(expert_params(objective.model, par.ep))
        for m in objective.modules():
            if isinstance(m, FSDP_UNITS):
                fully_shard(m, mesh=mesh, ignored_params=ignored)
        return fully_shard(objective, mesh=mesh, ignored_params=ignored)
    skip = [n for n, t in (*objective.named_parameters(), *objective.named_buffers()) if id(t) in experts]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, skip)
    return DistributedDataParallel(objective, device_ids=[par.device.index] if par.device.type == "cuda" else None)
