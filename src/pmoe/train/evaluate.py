"""Loss and accuracy of the vision models: the training objective's task term, and evaluation on a data set.

An ensemble (E³: `MoEModel.ensemble_size` M > 1, `forward_members`) trains, as vmoe, on the mean of its members' own
cross-entropies, labels repeated per member; its prediction is the argmax of the members' mean probabilities (its
`forward`, used for evaluation).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.data.vision import ImageBatches, ImageDataset
from pmoe.models import MoEModel


def task_loss(model: MoEModel, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(cross-entropy, scores (B, C) whose argmax is the prediction) of a training batch x (B, C, H, W), y (B,)."""
    if model.ensemble_size == 1:
        logits = model(x).float()  # (B, C)
        return F.cross_entropy(logits, y), logits
    members = model.forward_members(x).float()  # (B, M, C)
    M = members.shape[1]
    return F.cross_entropy(members.flatten(0, 1), y.repeat_interleave(M)), members.softmax(-1).mean(1)


@torch.no_grad()
def evaluate_images(model: nn.Module, ds: ImageDataset, batch_size: int = 512, device: torch.device | str | None = None,
                    num_workers: int = 0) -> dict[str, Any]:
    """`image_metrics` of `model` (eval mode, float32) on `ds`. `device`: the model's when None."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, preds = [], []
    for x, y in ImageBatches(ds, batch_size, device=device, num_workers=num_workers):
        logits = model(x).float()  # (B, C)
        losses.append(F.cross_entropy(logits, y, reduction="none"))
        preds.append(logits.argmax(-1))
    model.train(was_training)
    return image_metrics(torch.cat(losses).cpu(), torch.cat(preds).cpu(), ds)


def image_metrics(losses: Tensor, preds: Tensor, ds: ImageDataset) -> dict[str, Any]:
    """{'loss', 'accuracy'} of per-sample losses and predictions (N,) on `ds`, with 'group_accuracy' {group:
    accuracy} and 'worst_group_accuracy' when `ds.groups` is set."""
    correct = (preds == ds.labels).float()  # (N,)
    out: dict[str, Any] = {"loss": losses.sum().item() / len(ds), "accuracy": correct.mean().item()}
    if ds.groups is not None:
        out["group_accuracy"] = {g: correct[ds.groups == g].mean().item() for g in ds.groups.unique().tolist()}
        out["worst_group_accuracy"] = min(out["group_accuracy"].values())
    return out
