"""Training of the theory models with the paper's recipe: plain SGD, lr 0.2, batch 20, logistic loss.

Joint models train routers and experts together. `pmoe-separate` trains in two stages, as the official code:
its routers first, as the linear model sum_j <w_1 - w_2, x_j> with the linear loss -y f, then, routers frozen,
its experts with hard gates.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pmoe.data import PatchDataset
from pmoe.errors import check
from pmoe.metrics import correct, discriminative_routing, evaluate, logistic_loss
from pmoe.models.theory import MixtureOfCNNs, TwoLayerCNN
from pmoe.train.divergence import check_finite, finite_weights


@dataclass
class TrainConfig:
    epochs: int = 150  # epochs of the (expert) training
    batch_size: int = 20
    lr: float = 0.2  # plain SGD, no momentum, no weight decay
    seed: int = 0  # order of the mini-batches
    router_epochs: int = 100  # first stage of pmoe-separate: epochs of router training
    log_routing: bool = True  # record discriminative-routing fractions with the test metrics (MoE models)
    eval_every: int = 0  # test metrics (and routing) every this many epochs and after the last; 0: the last only

    def to_dict(self) -> dict:
        return asdict(self)


def _sgd_epochs(params: list[Tensor], ds: PatchDataset, epochs: int, cfg: TrainConfig, g: torch.Generator,
                forward: Callable[[Tensor], Tensor], loss_fn: Callable[[Tensor, Tensor], Tensor],
                on_epoch: Callable[[int, float, float], None], desc: str, progress: bool) -> None:
    """Plain SGD over shuffled mini-batches; on_epoch(epoch, mean batch loss, mean batch accuracy) after each epoch. A
    non-finite loss or weights stop the run (`pmoe.train.divergence`). The steps' losses and logits are kept and
    summed once per epoch, so a step runs no bookkeeping ops."""
    N = len(ds)
    starts = range(0, N, cfg.batch_size)
    sizes = torch.tensor([min(cfg.batch_size, N - i) for i in starts], dtype=torch.float32)  # (steps,)
    for p in params:
        p.grad = None
    for epoch in tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False):
        perm = torch.randperm(N, generator=g)
        y = ds.y[perm]  # (N,) labels in batch order
        losses, logits = [], []
        for i in starts:
            f = forward(ds.x.index_select(0, perm[i:i + cfg.batch_size]))
            loss = loss_fn(f, y[i:i + cfg.batch_size])
            loss.backward()
            _sgd_step(params, cfg.lr)
            losses.append(loss.detach())
            logits.append(f.detach())
        before, loss_per_step = (epoch - 1) * len(starts), torch.stack(losses)
        check_finite(_first_nonfinite(loss_per_step, before), bool(finite_weights(params)), before + len(starts),
                     f"epoch {epoch} of {desc}")
        on_epoch(epoch, (loss_per_step @ sizes).item() / N, correct(torch.cat(logits), y).sum().item() / N)


def _sgd_step(params: list[Tensor], lr: float) -> None:
    """p -= lr * p.grad for the params that got a gradient, which is then dropped: torch.optim.SGD without momentum
    and weight decay (the same update), without its per-step overhead."""
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
                p.grad = None


def _first_nonfinite(losses: Tensor, before: int) -> float:
    """Number of the first step whose loss is NaN or infinite, -1 if none; losses: (steps,) of steps before + 1,
    before + 2, ..."""
    bad = (~torch.isfinite(losses)).nonzero()
    return float(before + 1 + bad[0, 0].item()) if len(bad) else -1.0


def train(model: TwoLayerCNN | MixtureOfCNNs, train_ds: PatchDataset, test_ds: PatchDataset, cfg: TrainConfig,
          on_epoch: Callable[[dict], None] | None = None, progress: bool = True) -> list[dict]:
    """Train `model` in place; returns one metrics record per epoch (also passed to `on_epoch`): the running train
    loss and accuracy, and, after every `cfg.eval_every`-th and the last epoch of each stage, test loss, accuracy and
    (MoE models) routing. Evaluation draws no random numbers: how often it runs leaves the weights unchanged."""
    check(cfg.epochs >= 0 and cfg.batch_size >= 1 and cfg.lr > 0 and cfg.eval_every >= 0,
          f"need epochs >= 0, batch_size >= 1, lr > 0, eval_every >= 0; got {cfg.epochs}, {cfg.batch_size}, "
          f"{cfg.lr}, {cfg.eval_every}")
    check(train_ds.n == test_ds.n and train_ds.d == test_ds.d,
          f"train (n={train_ds.n}, d={train_ds.d}) and test (n={test_ds.n}, d={test_ds.d}) patches differ")
    g = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    is_moe = bool(model.moe_layers())
    start = time.perf_counter()

    def record(stage: str, epochs: int) -> Callable[[int, float, float], None]:
        def log(epoch: int, train_loss: float, train_accuracy: float) -> None:
            # train_*: running means over the epoch's mini-batches (the weights moved meanwhile); test_*: exact
            rec = {"stage": stage, "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy}
            if epoch == epochs or (cfg.eval_every and epoch % cfg.eval_every == 0):
                model.eval()
                rec.update({f"test_{k}": v for k, v in evaluate(model, test_ds).items()})
                if is_moe and cfg.log_routing and test_ds.disc_pos is not None:
                    rec["routing"] = discriminative_routing(model, test_ds)
                model.train()
            rec["seconds"] = round(time.perf_counter() - start, 3)
            history.append(rec)
            if on_epoch:
                on_epoch(rec)
        return log

    model.train()
    if model.routers_first:
        router = [model.router.weight]
        _sgd_epochs(router, train_ds, cfg.router_epochs, cfg, g, model.router_logit, lambda f, y: -(y * f).mean(),
                    record("routers", cfg.router_epochs), "routers", progress)
        model.router.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    _sgd_epochs(params, train_ds, cfg.epochs, cfg, g, model, logistic_loss, record("train", cfg.epochs), "train",
                progress)
    model.eval()
    return history
