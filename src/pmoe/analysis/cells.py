"""Which cells of an image each expert of a routed layer takes: a bool mask per MoE layer, in input-image pixels.

A cell is the image area behind one routed token, as the model's `cell_grid` says (`pmoe.models.base.CellGrid`):
a canvas patch for the theory models, a ViT patch (the cls token has no cell), a region of WRN-pMoE's last map
(receptive fields reach further than the cell). A patch router's expert takes its l tokens of each image; with a
token router, an expert takes the tokens it kept (chosen in the top-K and not dropped for capacity; E³: by any
member's copy). Models built for larger images than they are fed zero-pad them centrally: the grid then starts at
-padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pmoe.errors import check
from pmoe.layers import PatchRouting, RoutedLayer, TokenRouting
from pmoe.models import MoEModel


@dataclass
class ExpertCells:
    masks: list[Tensor]  # per MoE layer in depth order: (B, k, grid_h, grid_w) bool, expert s took cell (i, j)
    cell: int  # side of a cell in pixels of the input images
    offset: int  # pixel coordinate (row and column) of the grid's top-left corner in the input images

    def rect(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) in input-image pixels of cell (i, j): row i, column j."""
        return self.offset + j * self.cell, self.offset + i * self.cell, self.cell, self.cell


@torch.no_grad()
def expert_cells(model: MoEModel, images: Tensor) -> ExpertCells:
    """Cells taken by every expert of every MoE layer of `model` for `images` (B, C, H, W), routed as the model's
    current mode does (call `.eval()` first for evaluation routing)."""
    layers = model.moe_layers()
    check(len(layers) > 0, f"{type(model).__name__} is a dense model: it has no routed (MoE) layer")
    grid = model.cell_grid(images)
    model(model.image_inputs(images))
    B = len(images)
    masks = [taken(layer, B, grid.tokens)[:, :, grid.skip:].reshape(B, -1, grid.rows, grid.cols) for layer in layers]
    return ExpertCells(masks, grid.cell, grid.offset)


def taken(layer: RoutedLayer, batch: int, n: int) -> Tensor:
    """(B, k, n) bool: the tokens each expert of `layer` took in its last forward, of n per image."""
    r = layer.last_routing
    return chosen(r.index, n) if isinstance(r, PatchRouting) else kept_tokens(r, batch, n, layer.num_experts)


def chosen(index: Tensor, n: int) -> Tensor:
    """index (B, k, l) of picked positions among n -> (B, k, n) bool."""
    return torch.zeros(*index.shape[:2], n, dtype=torch.bool, device=index.device).scatter_(2, index, True)


def kept_tokens(r: TokenRouting, batch: int, n: int, k: int) -> Tensor:
    """(B, k, n) bool: expert s kept token t of image b (in its top-K, not dropped); copies of an image (E³) pooled."""
    hit = F.one_hot(r.expert, k).bool() & ~r.dropped.unsqueeze(-1)  # (G, T, K, k)
    return hit.any(dim=2).reshape(batch, -1, n, k).any(dim=1).transpose(1, 2)  # (B, k, n)
