"""Evaluation of theory models: logistic loss, accuracy, and the discriminative-routing property."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.data import PatchDataset


def logistic_loss(f: Tensor, y: Tensor) -> Tensor:
    """mean log(1 + exp(-y f)); f, y: (B,), y in {+1, -1}."""
    return F.softplus(-y * f).mean()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Logits of `model` on x: (N, n, d) -> (N,), in batches."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, ds: PatchDataset) -> dict[str, float]:
    """{'loss', 'accuracy'} of `model` on `ds` (a prediction of 0 counts as wrong)."""
    f = predict(model, ds.x)
    return {"loss": logistic_loss(f, ds.y).item(), "accuracy": (f * ds.y > 0).float().mean().item()}


@torch.no_grad()
def discriminative_routing(model: nn.Module, ds: PatchDataset, batch_size: int = 4096) -> dict:
    """How often each expert's router picks the class-discriminative patch, against chance l/n.

    Returns {'chance', 'any_expert', 'per_expert': [k], 'per_class': {'+1': [k], '-1': [k]}, 'best_expert'};
    fractions of samples. `best_expert` averages over the two classes the hit rate of the expert that takes that
    class's discriminative patch most often: near 1 when routers send each class's pattern to a fixed expert.
    """
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
        "any_expert": hit.amax(dim=1).mean().item(),
        "per_expert": hit.mean(dim=0).tolist(),
        "per_class": {c: h.tolist() for c, h in per_class.items()},
        "best_expert": sum(h.max().item() for h in per_class.values()) / 2,
    }
