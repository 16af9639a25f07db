"""Which cells of an image each expert of a routed layer takes: a bool mask per MoE layer, in input-image pixels.

A cell is the image area behind one routed patch, by model family:
* theory `MixtureOfCNNs` on canvases: one canvas patch (side sqrt(d), e.g. 28 px); the images are the canvases.
* `ViT` / `E3ViT` with MoE FFNs: one ViT patch (patch_size px); the cls token has no cell and is left out. A patch
  router's expert takes its l tokens of each image; with a token router, an expert takes the tokens it kept (chosen
  in the top-K and not dropped for capacity; E³: by any member's copy).
* `WideResNet` with pMoE: one region of p x p cells of the last feature map, 4 px per map cell (the stride before
  it), so 4p px; receptive fields reach further than the cell.
Models built for larger images than they are fed zero-pad them centrally: the grid then starts at -padding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.models.theory import MixtureOfCNNs
from pmoe.models.vit import ViT
from pmoe.models.wrn import WideResNet, patchify
from pmoe.routing import PatchRouting, TokenRouting

WRN_STRIDE = 4  # input pixels per cell of WRN-pMoE's last map


@dataclass
class ExpertCells:
    masks: list[Tensor]  # per MoE layer in depth order: (B, k, grid_h, grid_w) bool, expert s took cell (i, j)
    cell: int  # side of a cell in pixels of the input images
    offset: int  # pixel coordinate (row and column) of the grid's top-left corner in the input images

    def rect(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) in input-image pixels of cell (i, j): row i, column j."""
        return self.offset + j * self.cell, self.offset + i * self.cell, self.cell, self.cell


@torch.no_grad()
def expert_cells(model: nn.Module, images: Tensor) -> ExpertCells:
    """Cells taken by every expert of every MoE layer of `model` for `images` (B, C, H, W), routed as the model's
    current mode does (call `.eval()` first for evaluation routing)."""
    check(len(model.moe_layers()) > 0, f"{type(model).__name__} is a dense model: it has no routed (MoE) layer")
    if isinstance(model, MixtureOfCNNs):
        return _theory_cells(model, images)
    if isinstance(model, WideResNet):
        return _wrn_cells(model, images)
    check(isinstance(model, ViT), f"no cell mapping for {type(model).__name__}; expected a theory MixtureOfCNNs, "
                                  "a WideResNet or a ViT with routed layers")
    return _vit_cells(model, images)


def chosen(index: Tensor, n: int) -> Tensor:
    """index (B, k, l) of picked positions among n -> (B, k, n) bool."""
    return torch.zeros(*index.shape[:2], n, dtype=torch.bool, device=index.device).scatter_(2, index, True)


def kept_tokens(r: TokenRouting, batch: int, n: int, k: int) -> Tensor:
    """(B, k, n) bool: expert s kept token t of image b (in its top-K, not dropped); copies of an image (E³) pooled."""
    hit = F.one_hot(r.expert, k).bool() & ~r.dropped.unsqueeze(-1)  # (G, T, K, k)
    return hit.any(dim=2).reshape(batch, -1, n, k).any(dim=1).transpose(1, 2)  # (B, k, n)


def _padding(image_size: int, side: int) -> int:
    return (image_size - side) // 2  # as `fit_images`


def _theory_cells(model: MixtureOfCNNs, images: Tensor) -> ExpertCells:
    cfg = model.config
    p, (H, W) = math.isqrt(cfg.d), images.shape[-2:] if images.dim() == 4 else (0, 0)
    check(images.dim() == 4 and images.shape[1] == 1 and p * p == cfg.d and H % p == 0 and W % p == 0
          and (H // p) * (W // p) == cfg.n, f"a theory model of n={cfg.n} patches of d={cfg.d} takes canvases "
          f"(B, 1, H, W) of n square patches, got shape {tuple(images.shape)}")
    index = model.moe.route(patchify(images, p)).index  # (B, k, l)
    return ExpertCells([chosen(index, cfg.n).view(len(images), -1, H // p, W // p)], p, 0)


def _wrn_cells(model: WideResNet, images: Tensor) -> ExpertCells:
    cfg = model.config
    model(images)
    rows = cfg.map_size // cfg.region
    mask = chosen(model.last_routing.index, rows * rows).view(len(images), -1, rows, rows)
    return ExpertCells([mask], WRN_STRIDE * cfg.region, -_padding(cfg.image_size, images.shape[-1]))


def _vit_cells(model: ViT, images: Tensor) -> ExpertCells:
    cfg = model.config
    model(images)
    g, B, n = cfg.image_size // cfg.patch_size, len(images), cfg.tokens
    masks = []
    for ffn in model.moe_ffns():
        r: PatchRouting | TokenRouting = ffn.last_routing
        tokens = chosen(r.index, n) if isinstance(r, PatchRouting) else kept_tokens(r, B, n, ffn.moe.num_experts)
        masks.append(tokens[:, :, 1:].reshape(B, -1, g, g))  # cls token (0) dropped
    return ExpertCells(masks, cfg.patch_size, -_padding(cfg.image_size, images.shape[-1]))
