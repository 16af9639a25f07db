"""The layout of a run over the processes of torchrun: a ("dp", "ep") DeviceMesh, world = dp · ep.

torchrun starts one process per device and sets WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous; `init_parallel`
joins the process group (NCCL on CUDA, gloo on CPU) and returns the `Parallel` layout, or None for one process, which
then trains exactly as without torchrun. Ranks lie row-major in the mesh (rank = dp_index · ep + ep_index): an EP
group is `ep` consecutive ranks, on one node when ep divides the devices per node.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from pmoe.errors import check


@dataclass(frozen=True)
class Parallel:
    """Where this process stands in a run over several: its mesh, its device, and how dense weights are kept."""

    mesh: DeviceMesh  # ("dp", "ep"): each EP group shares its layers' experts; each rank its own shard of a batch
    device: torch.device  # this rank's: cuda:LOCAL_RANK, or cpu
    fsdp: bool = False  # dense weights sharded over the world by FSDP2; replicated by DDP otherwise

    @property
    def rank(self) -> int:
        """This rank's index in the run, dp_index · ep + ep_index (its global rank: the mesh spans the world)."""
        d, e = self.mesh.get_coordinate()
        return d * self.ep + e

    @property
    def world(self) -> int:
        return self.mesh.size()

    @property
    def ep(self) -> int:
        return self.mesh.size(1)

    @property
    def dp(self) -> int:
        return self.mesh.size(0)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes files."""
        return self.rank == 0

    def group(self, dim: str) -> ProcessGroup:
        """The process group of this rank along mesh dimension "dp" or "ep"."""
        return self.mesh.get_group(dim)


def all_gather(t: Tensor, group: ProcessGroup | None = None) -> Tensor:
    """t (rows, ...) of every rank of `group` (default: the world) -> (ranks · rows, ...), in rank order."""
    out = t.new_empty(dist.get_world_size(group) * t.shape[0], *t.shape[1:])
    dist.all_gather_into_tensor(out, t.contiguous(), group=group)
    return out


def world_size() -> int:
    """Processes of the run: the process group's, or torchrun's WORLD_SIZE (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process is rank 0 (or alone), before or after the process group exists."""
    return (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))) == 0


def check_layout(expert_parallel: int, fsdp: bool, world: int, compile_: bool = False) -> None:
    """PmoeError unless a run of `world` processes can have EP groups of `expert_parallel` ranks (and FSDP2, and a
    compiled training step)."""
    check(expert_parallel >= 1 and world % expert_parallel == 0,
          f"--expert-parallel {expert_parallel} must divide the number of processes, {world} (torchrun --nnodes × "
          "--nproc-per-node; one process without torchrun): each EP group holds every expert once")
    check(world > 1 or not fsdp, "--fsdp shards the dense weights over the processes of torchrun, but this is one "
                                 "process; launch with torchrun --nproc-per-node N (N >= 2), or leave --fsdp out")
    check(world == 1 or not compile_, "--compile trains in one process only: torchrun runs are not compiled; leave "
                                      "--compile out")


def init_parallel(expert_parallel: int, fsdp: bool, device: torch.device, compile_: bool = False) -> Parallel | None:
    """The layout of this process in a torchrun run with EP groups of `expert_parallel` ranks; None for one process.

    `device` is the run's device type (cpu or cuda); under torchrun each rank takes cuda:LOCAL_RANK.
    """
    world = world_size()
    check_layout(expert_parallel, fsdp, world, compile_)
    if world == 1:
        return None
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(dist.destroy_process_group)
    mesh = init_device_mesh(device.type, (world // expert_parallel, expert_parallel), mesh_dim_names=("dp", "ep"))
    return Parallel(mesh, device, fsdp)
