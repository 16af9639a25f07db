"""Checkpoints of a run over several processes.

* The model: `model.safetensors` + `config.json` stay the one format. `full_state` gathers the whole model on every
  rank (expert shards all-gathered over their EP group, FSDP shards over the world) and rank 0 writes it with the
  writer of one process (`pmoe.checkpoints`, atomic), so the checkpoint evaluates, routes and prunes on one device.
* The resumable state: out/train_state/, a torch.distributed.checkpoint (DCP) folder holding model and optimizer by
  parameter name (expert tensors as DTensors sharded along dim 0 over the EP ranks), the run's progress as JSON and
  each rank's RNG states. DCP stores global tensors: the run resumes on another world or EP size, and in one process
  without torchrun; on the same world size bit for bit (the RNG states too). Every rank writes its part into a
  temporary folder that rank 0 then renames into place, so a kill leaves the previous state whole. A run started in
  one process (train_state.pt) continues under torchrun too (`load_whole`).
"""
from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from pmoe.train.distributed.expert_parallel import expert_names
from pmoe.train.distributed.mesh import Parallel, all_gather
from pmoe.io import atomic_path
from pmoe.train.state import DCP_STATE, rng_states, set_rng_states


def full_state(model: nn.Module, par: Parallel) -> dict[str, Tensor]:
    """The whole `model`'s state dict on CPU, on every rank (a collective: every rank calls it)."""
    sharded, out = expert_names(model, par.ep), {}
    for name, t in model.state_dict().items():
        if isinstance(t, DTensor):
            t = t.full_tensor()
        elif name in sharded:
            t = all_gather(t, par.group("ep"))  # (k·rows/E, ...) -> (k·rows, ...)
        out[name] = t.detach().cpu()
    return out


def sharded_state(model: nn.Module, opt: torch.optim.Optimizer, par: Parallel | None) -> dict[str, Any]:
    """{'model', 'optim'} state dicts by parameter name; with `par`, each sharded expert tensor (weights, buffers and
    the optimizer's per-weight states) a DTensor of the (dp, ep) mesh: replicated over dp, Shard(0) over ep."""
    msd, osd = get_state_dict(model, opt)  # the optimizer's per-weight dicts are its own: replaced, not changed
    for name in expert_names(model, 1 if par is None else par.ep):
        shape, msd[name] = msd[name].shape, _over_ep(msd[name], par)
        if name in osd["state"]:
            osd["state"][name] = {k: _over_ep(v, par) if v.shape == shape else v for k, v in osd["state"][name].items()}
    return {"model": msd, "optim": osd}


def _over_ep(t: Tensor, par: Parallel) -> DTensor:
    """This rank's expert shard `t` as the DTensor of the whole: replicated over dp, Shard(0) over ep."""
    return DTensor.from_local(t, par.mesh, [Replicate(), Shard(0)], run_check=False)


def _to_local(state: dict[str, Any], names: set[str]) -> None:
    """`sharded_state`'s expert DTensors back to this rank's shards (for `set_state_dict`)."""
    for name in names:
        state["model"][name] = state["model"][name].to_local()
        if name in state["optim"]["state"]:
            state["optim"]["state"][name] = {k: v.to_local() if isinstance(v, DTensor) else v
                                             for k, v in state["optim"]["state"][name].items()}


def save_resumable(out: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict, par: Parallel) -> None:
    """Write out/train_state/: model and optimizer of every rank, `meta` (JSON-able), each rank's RNG states."""
    state = {**sharded_state(model, opt, par), "meta": json.dumps(meta), f"rng_rank{par.rank}": rng_states()}
    with atomic_path(out / DCP_STATE, is_dir=True) if par.is_main else nullcontext() as tmp:
        folder = [str(tmp)]
        dist.broadcast_object_list(folder, src=0)
        dcp.save(state, checkpoint_id=folder[0])  # returns once every rank's files are written


def _dcp_load(state: dict[str, Any], out: Path) -> None:
    """Fill `state` from out/train_state/ (a collective under torchrun; alone, a load in this process)."""
    with warnings.catch_warnings():  # DCP warns that it loads in one process whenever it does
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=out / DCP_STATE, no_dist=not dist.is_initialized())


def read_meta(out: Path) -> dict:
    """The `meta` of out/train_state/."""
    state = {"meta": ""}
    _dcp_load(state, out)
    return json.loads(state["meta"])


def load_resumable(out: Path, model: nn.Module, opt: torch.optim.Optimizer, par: Parallel | None,
                   saved_world: int) -> bool:
    """Load model and optimizer from out/train_state/, and this rank's RNG states if the run had as many ranks
    (`saved_world`); returns whether it had."""
    rank, world = (0, 1) if par is None else (par.rank, par.world)
    state = sharded_state(model, opt, par)
    if saved_world == world:
        state[f"rng_rank{rank}"] = rng_states()
    _dcp_load(state, out)
    _set(model, opt, state, par)
    if saved_world == world:
        set_rng_states(state[f"rng_rank{rank}"])
    return saved_world == world


@torch.no_grad()
def load_whole(model: nn.Module, opt: torch.optim.Optimizer, whole_model: nn.Module, whole_opt: torch.optim.Optimizer,
               par: Parallel) -> None:
    """Load this rank's part of a whole model and its optimizer (one process's: a run started without torchrun)."""
    whole, state = sharded_state(whole_model, whole_opt, None), sharded_state(model, opt, par)
    for name, t in state["model"].items():
        _fill(t, whole["model"][name])
    for name, entries in state["optim"]["state"].items():
        for key, t in entries.items():
            _fill(t, whole["optim"]["state"][name][key])
    state["optim"]["param_groups"] = whole["optim"]["param_groups"]  # the learning rates reached
    _set(model, opt, state, par)


def _fill(target: Tensor, whole: Tensor) -> None:
    """Copy into `target` its part of `whole`: the shard of this rank for a DTensor."""
    if isinstance(target, DTensor):
        whole = distribute_tensor(whole.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
        target.to_local().copy_(whole.to_local())
    else:
        target.copy_(whole)


def _set(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any], par: Parallel | None) -> None:
    """Load a `sharded_state` into `model` and `opt`."""
    _to_local(state, expert_names(model, 1 if par is None else par.ep))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
