"""Discriminative routing of vision models on the patch-canvas images: how often each expert's cells cover the
class patch of a canvas, against chance; the image-scale counterpart of `pmoe.metrics.discriminative_routing`.

An expert "hits" an image when one of the cells it takes (`expert_cells`) overlaps the canvas patch that holds the
class (attribute 'disc_pos'). Chance is the share of the canvas's patches its cells overlap, averaged over images:
the hit rate it would have if the class patch sat at a random position (l/n when cells and patches coincide).
`best_expert` is a max over the k experts, so its chance level is higher: `chance_best_expert`, the expected max of k
independent experts that each hit an image with probability `chance` (`pmoe.metrics.chance_of_best`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pmoe.analysis.cells import ExpertCells, expert_cells
from pmoe.analysis.routing_grid import layer_mask
from pmoe.data.vision import ImageBatches, ImageDataset
from pmoe.errors import check
from pmoe.metrics import chance_of_best


def patch_overlap(cells: ExpertCells, grid_h: int, grid_w: int, grid: int, patch: int) -> Tensor:
    """(grid_h * grid_w, grid * grid) bool: cell (row-major) overlaps canvas patch q (row-major) of `patch` px."""
    lo = cells.offset + torch.arange(max(grid_h, grid_w)) * cells.cell  # first pixel of cell row/column i
    start = torch.arange(grid) * patch
    over = (lo[:, None] < start[None] + patch) & (start[None] < lo[:, None] + cells.cell)  # (cells, patches) 1-D
    rows, cols = over[:grid_h], over[:grid_w]
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(grid_h * grid_w, grid * grid)


@torch.no_grad()
def class_patch_hits(model: nn.Module, ds: ImageDataset, layer: int = -1, batch_size: int = 256,
                     device: str | torch.device = "cpu") -> dict:
    """Hit rates of every expert of MoE layer `layer` on the canvas images `ds` (fashion-patches-image).

    Returns {'chance', 'chance_best_expert', 'per_expert': [k], 'per_class': {class name: [k]}, 'best_expert'}:
    fractions of images; `best_expert` averages over the classes the hit rate of the expert that covers that class's
    patch most often.
    """
    check("disc_pos" in ds.attributes and "grid" in ds.meta, "class-patch hit rates need the patch-canvas images "
          f"(fashion-patches-image, with a 'disc_pos' attribute and the canvas grid), got {ds!r}")
    grid, model = int(ds.meta["grid"]), model.eval().to(device)
    patch = ds.image_shape[-1] // grid
    hits, cover, start = [], [], 0
    for x, _ in ImageBatches(ds, batch_size, device=device):
        cells = expert_cells(model, x)
        mask = layer_mask(cells, layer)  # (B, k, gh, gw)
        overlap = patch_overlap(cells, *mask.shape[2:], grid, patch).float()  # (gh * gw, P)
        over = mask.flatten(2).float().cpu() @ overlap > 0  # (B, k, P)
        pos = ds.attributes["disc_pos"][start:start + len(x)].long()
        hits.append(over.gather(2, pos.view(-1, 1, 1).expand(-1, over.shape[1], 1)).squeeze(2))  # (B, k)
        cover.append(over.float().mean(dim=2))  # (B, k)
        start += len(x)
    hit, labels = torch.cat(hits).float(), ds.labels
    per_class = {ds.classes[c]: hit[labels == c].mean(dim=0) for c in labels.unique().tolist()}
    chance = torch.cat(cover).mean().item()
    sizes = [int((labels == c).sum()) for c in labels.unique().tolist()]
    return {"chance": chance, "chance_best_expert": chance_of_best(sizes, hit.shape[1], chance),
            "per_expert": hit.mean(dim=0).tolist(),
            "per_class": {c: h.tolist() for c, h in per_class.items()},
            "best_expert": sum(h.max().item() for h in per_class.values()) / len(per_class)}
