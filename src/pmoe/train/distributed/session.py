"""One rank's part of a run that torchrun started over several processes: `fit`'s session with its hooks changed.

The rank trains a copy of the model on its device holding its experts only (`wrap.rank_model`), through DDP or
FSDP2; takes its share of every global batch; reduces expert gradients, clips by the global norm and sums the
epoch's metrics over the ranks; averages batch-norm statistics; evaluates its part of the data; writes the resumable
state with DCP; and gathers the whole model into the caller's before rank 0 publishes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pmoe.data.vision import Augment, ImageDataset
from pmoe.train.distributed.checkpoint import full_state, load_whole, save_resumable
from pmoe.train.distributed.data import ShardedBatches, evaluate_sharded, reduce_epoch
from pmoe.train.distributed.grads import average_batch_norms, clip_grad_norm, local, reduce_expert_grads
from pmoe.train.distributed.mesh import Parallel
from pmoe.train.distributed.expert_parallel import expert_params
from pmoe.train.distributed.wrap import rank_model, wrap
from pmoe.train.optim import make_optimizer
from pmoe.train.vision import FitConfig, Objective, Session


class RankSession(Session):
    """`Session` of rank `par.rank` of `par.world`."""

    def __init__(self, model: nn.Module, train_ds: ImageDataset, cfg: FitConfig, par: Parallel) -> None:
        self.par, self.rank, self.world, self.is_main = par, par.rank, par.world, par.is_main
        self.home_step: int | None = None  # the step whose weights the caller's model holds
        super().__init__(model, train_ds, cfg, par.device)
        self.experts = expert_params(self.model, par.ep)
        ids = {id(p) for p in self.experts}
        self.dense = [p for p in self.model.parameters() if id(p) not in ids]
        self._single_tensor_steps()

    def _single_tensor_steps(self) -> None:
        """With FSDP2 the optimizer's groups mix DTensor (dense) and plain (expert) weights, which its multi-tensor
        (foreach) kernels refuse: step them one by one."""
        for group in self.opt.param_groups if self.par.fsdp and self.experts else ():
            group["foreach"] = False

    def _place(self, model: nn.Module) -> nn.Module:
        return rank_model(model, self.par)

    def _wrap(self, objective: Objective) -> nn.Module:
        return wrap(objective, self.par)

    def _batches(self, ds: ImageDataset, augment: Augment | None) -> ShardedBatches:
        return ShardedBatches(ds, self.cfg.batch_size, self.par, augment=augment, seed=self.cfg.seed,
                              num_workers=self.cfg.num_workers)

    def _finish_grads(self) -> None:
        reduce_expert_grads(self.experts, self.par)
        if self.cfg.optim.clip_norm is not None:
            clip_grad_norm(self.dense, self.experts, self.cfg.optim.clip_norm, self.par)

    def _reduce(self, stats: Tensor) -> Tensor:
        return reduce_epoch(stats)

    def _local_params(self) -> list[Tensor]:
        return local(self.model.parameters())

    def evaluate(self, ds: ImageDataset) -> dict[str, Any]:
        return evaluate_sharded(self.objective, ds, self.cfg.eval_batch_size, self.par.device, self.cfg.num_workers)

    def precise_batch_norm(self) -> None:
        super().precise_batch_norm()
        average_batch_norms(self.model, self.par)

    def sync_home(self) -> None:
        if self.home_step != self.step:
            self.home.load_state_dict(full_state(self.model, self.par))
            self.home_step = self.step

    def finish(self) -> None:
        super().finish()
        self.home.to(self.par.device)

    def _load_tensors(self, state: dict[str, Any], out: Path) -> bool:
        if "model" in state:  # train_state.pt of a run of one process
            whole_opt = make_optimizer(self.home, self.cfg.optim)
            self.home.load_state_dict(state["model"])
            whole_opt.load_state_dict(state["optimizer"])
            load_whole(self.model, self.opt, self.home, whole_opt, self.par)
            same_world = False
        else:
            same_world = super()._load_tensors(state, out)
        self._single_tensor_steps()  # the loaded groups' options are the saved run's
        return same_world

    def save(self, out: Path, settings: dict) -> None:
        save_resumable(out, self.model, self.opt, {**self.progress_state(settings), "world": self.world}, self.par)
