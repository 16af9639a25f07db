"""Evaluation of theory models: logistic loss, accuracy, and the discriminative-routing property.

Tie rule of every ±1 accuracy: a logit f predicts +1 if f > 0 and -1 if f <= 0 (`predict_labels`), as the pMoE
authors' code and `sign` with ties to -1. A model that outputs exactly 0 (a CNN whose output weights share one sign
and whose ReLUs are all off) thus predicts class -1 rather than being wrong for both classes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.data import PatchDataset
from pmoe.errors import check


def logistic_loss(f: Tensor, y: Tensor) -> Tensor:
    """mean log(1 + exp(-y f)); f, y: (B,), y in {+1, -1}."""
    return F.softplus(-y * f).mean()


def predict_labels(f: Tensor) -> Tensor:
    """±1 predictions of logits f (B,): +1 where f > 0, -1 where f <= 0 (ties go to -1)."""
    return torch.where(f > 0, 1.0, -1.0).to(f.dtype)


def correct(f: Tensor, y: Tensor) -> Tensor:
    """(B,) bool: whether logit f predicts label y in {+1, -1} (tie rule of `predict_labels`)."""
    return predict_labels(f) == y


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Logits of `model` on x: (N, n, d) -> (N,), in batches."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, ds: PatchDataset) -> dict[str, float]:
    """{'loss', 'accuracy'} of `model` on `ds` (a logit of 0 predicts -1)."""
    f = predict(model, ds.x)
    return {"loss": logistic_loss(f, ds.y).item(), "accuracy": correct(f, ds.y).float().mean().item()}


def chance_of_best(class_sizes: list[int], experts: int, p: float) -> float:
    """Expected `best_expert` hit rate under random routing: each of `experts` experts hits each sample independently
    with probability p (l random patches of n: p = l/n). A class of N_c samples then gives its best expert
    E[max of k Binomial(N_c, p)] / N_c (exact: sum over t < N_c of 1 - P(Bin <= t)^k); averaged over the classes.
    Above p, by about 1.4 binomial standard deviations for k = 8."""
    rates = []
    for N in class_sizes:
        t = torch.arange(N + 1, dtype=torch.float64)
        log_pmf = (math.lgamma(N + 1) - torch.lgamma(t + 1) - torch.lgamma(N - t + 1)
                   + torch.xlogy(t, torch.tensor(p, dtype=torch.float64))
                   + torch.xlogy(N - t, torch.tensor(1 - p, dtype=torch.float64)))  # (N + 1,)
        cdf = log_pmf.exp().cumsum(0).clamp(max=1.0)
        rates.append((1 - cdf[:-1] ** experts).sum().item() / N)
    return sum(rates) / len(rates)


@torch.no_grad()
def discriminative_routing(model: nn.Module, ds: PatchDataset, batch_size: int = 4096) -> dict:
    """How often each expert's router picks the class-discriminative patch, against chance.

    Returns {'chance', 'chance_best_expert', 'any_expert', 'per_expert': [k], 'per_class': {'+1': [k], '-1': [k]},
    'best_expert'}; fractions of samples. `chance` = l/n is one expert's hit rate under random routing.
    `best_expert` averages over the two classes the hit rate of the expert that takes that class's discriminative
    patch most often: near 1 when routers send each class's pattern to a fixed expert. Being a max over k experts,
    its chance level is `chance_best_expert` (`chance_of_best`), not l/n; and random linear routers, such as those
    at initialisation, can already favour the class patches: compare with the run's initial weights.
    """
    check(ds.disc_pos is not None, f"routing hit rates need the position of each sample's class-discriminative "
          f"patch (disc_pos), which the data {ds.meta.get('source', ds.meta.get('name', ''))} does not record")
    moe = model.moe
    hits = []
    for i in range(0, len(ds), batch_size):
        idx = moe.route(ds.x[i:i + batch_size]).index  # (B, k, l)
        hits.append((idx == ds.disc_pos[i:i + batch_size].view(-1, 1, 1)).any(dim=-1))  # (B, k)
    hit = torch.cat(hits).float()  # (N, k)
    pos = ds.y > 0
    per_class = {"+1": hit[pos].mean(dim=0), "-1": hit[~pos].mean(dim=0)}
    return {
        "chance": moe.l / ds.n,
        "chance_best_expert": chance_of_best([int(pos.sum()), int((~pos).sum())], hit.shape[1], moe.l / ds.n),
        "any_expert": hit.amax(dim=1).mean().item(),
        "per_expert": hit.mean(dim=0).tolist(),
        "per_class": {c: h.tolist() for c, h in per_class.items()},
        "best_expert": sum(h.max().item() for h in per_class.values()) / 2,
    }
