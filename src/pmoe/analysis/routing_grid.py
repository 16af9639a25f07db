"""Routing pictures: each expert's chosen cells outlined on example images of every class, and per class how often
each expert picks each cell (`pick_frequency`), as a heat map at the end of the expert's row."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from pmoe.analysis.cells import ExpertCells, expert_cells
from pmoe.errors import check
from pmoe.io import atomic_path
from pmoe.reports import plt  # Agg backend

COLORS = [plt.cm.tab10(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # one per expert; tab10 without its grey


def layer_index(num_layers: int, layer: int) -> int:
    """`layer`, an index into a model's moe_layers() (negative: from the end), as 0..num_layers-1."""
    check(-num_layers <= layer < num_layers,
          f"layer must be in {-num_layers}..{num_layers - 1} (the model has {num_layers} MoE layers), got {layer}")
    return layer % num_layers


def layer_mask(cells: ExpertCells, layer: int) -> Tensor:
    """(B, k, gh, gw) mask of MoE layer `layer` (an index into the model's moe_layers(), negative from the end)."""
    return cells.masks[layer_index(len(cells.masks), layer)]


@torch.no_grad()
def pick_frequency(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
                   layer: int = -1) -> tuple[Tensor, Tensor]:
    """(fraction (C, k, gh, gw): of the images of class c in which expert s took cell (i, j), counts (C,)) over
    `batches` of (images (B, C, H, W), labels (B,) in [0, num_classes))."""
    sums, counts = None, torch.zeros(num_classes)
    for x, y in batches:
        mask = layer_mask(expert_cells(model, x), layer).float().cpu()  # (B, k, gh, gw)
        y = y.cpu()
        sums = (mask.new_zeros(num_classes, *mask.shape[1:]) if sums is None else sums).index_add_(0, y, mask)
        counts += torch.bincount(y, minlength=num_classes)
    check(sums is not None, "no image to count routing over")
    return sums / counts.clamp(min=1).view(-1, 1, 1, 1), counts


def examples_per_class(labels: Tensor, per_class: int) -> Tensor:
    """Indices of the first `per_class` samples of every class present in `labels`, class by class."""
    return torch.cat([torch.nonzero(labels == c).squeeze(1)[:per_class] for c in labels.unique()])


def _show(ax: plt.Axes, image: Tensor) -> None:
    """An image (C, H, W) of any range, min-max scaled; grey for one channel."""
    x = image.detach().float().cpu()
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-12)
    ax.imshow((x[0] if len(x) == 1 else x.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)


def _outline(ax: plt.Axes, rect: tuple[int, int, int, int], **style) -> None:
    """Frame the pixels rect = (x, y, width, height); imshow puts pixel centres at integer coordinates."""
    x, y, w, h = rect
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, **style))


def draw_routing_grid(path: str | Path, images: Tensor, labels: Tensor, class_names: list[str], cells: ExpertCells,
                      layer: int = -1, frequency: Tensor | None = None, marked: Tensor | None = None,
                      title: str = "") -> None:
    """PNG: a row per expert of MoE layer `layer`; a column per example image (B, C, H, W) with the expert's cells
    outlined, then, given `frequency` (C, k, gh, gw), a heat map per class. `marked` (B,): a flat cell index per
    image to frame dashed (e.g. the class-discriminative patch), -1 for none."""
    mask = layer_mask(cells, layer).cpu()  # (B, k, gh, gw)
    B, k, gh, gw = mask.shape
    heat = [] if frequency is None else list(range(len(class_names)))
    fig, axes = plt.subplots(k, B + len(heat), figsize=(1.4 * (B + len(heat)), 1.4 * k + 0.6), dpi=110,
                             squeeze=False, layout="constrained")
    H, W = images.shape[-2:]
    lo, hi = min(0, cells.offset) - 0.5, max(H, W, cells.offset + max(gh, gw) * cells.cell) - 0.5
    for s in range(k):
        color = COLORS[s % len(COLORS)]
        for b in range(B):
            ax = axes[s, b]
            _show(ax, images[b])
            for i, j in torch.nonzero(mask[b, s]).tolist():
                _outline(ax, cells.rect(i, j), edgecolor=color, linewidth=1.6)
            if marked is not None and marked[b] >= 0:
                _outline(ax, cells.rect(*divmod(int(marked[b]), gw)), edgecolor="w", linestyle="--", linewidth=1)
            ax.set(xlim=(lo, hi), ylim=(hi, lo), xticks=[], yticks=[])
            if s == 0:
                ax.set_title(class_names[int(labels[b])][:14], fontsize=8)
        for c in heat:
            ax = axes[s, B + c]
            im = ax.imshow(frequency[c, s].cpu().numpy(), vmin=0, vmax=1, cmap="magma")
            ax.set(xticks=[], yticks=[])
            if s == 0:
                ax.set_title(f"P(pick) | {class_names[c][:10]}", fontsize=7)
        axes[s, 0].set_ylabel(f"expert {s}", color=color, fontsize=9)
    if heat:
        fig.colorbar(im, ax=axes[:, B:].ravel().tolist(), shrink=0.6)
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
