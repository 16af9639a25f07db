"""Which patches the routers of a checkpoint pick (`pmoe route`), on the test data it was made with.

Theory checkpoints (pmoe, pmoe-separate): `discriminative_routing` -- how often each expert picks the class patch,
against chance l/n, and the best expert of each class against the same routers at the run's initial weights.
Vision checkpoints (WRN-pMoE, ViT-MoE, E3): per class, the share of test images in which each expert of one MoE
layer takes each cell; on patch canvases also how often each expert's cells cover the class patch (trained and at
the run's initial weights). With `png`, both draw each expert's cells on example test images of every class.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pmoe.analysis import ExpertCells, draw_routing_grid, examples_per_class, expert_cells, layer_index, pick_frequency
from pmoe.analysis.hits import class_patch_hits
from pmoe.checkpoints import load_checkpoint
from pmoe.data.patches import canvas_image
from pmoe.data.vision import ImageBatches, seeded_generator
from pmoe.errors import check
from pmoe.fields import typed
from pmoe.metrics import discriminative_routing
from pmoe.runs.images import ImageDataSpec, initial_model
from pmoe.runs.theory import evaluate_checkpoint, initial_theory_model
from pmoe.train import resolve_device

BATCH = 256  # images per forward pass when counting picks


@dataclass
class RouteConfig:
    layer: int = -1  # MoE layer, by index in depth order (vision models)
    images: int = 1000  # test images to count picks over
    examples: int = 3  # example images per class in the picture
    png: str | None = None  # where to draw the picture; None: no picture
    device: str | None = None  # vision checkpoints: auto, cpu, cuda, cuda:N (None: auto); theory models run on CPU


def _picture(cfg: RouteConfig, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
             examples: tuple[Tensor, Tensor], classes: list[str], marked: Tensor | None,
             title: str) -> tuple[Tensor, ExpertCells]:
    """(pick shares (C, k, gh, gw) of MoE layer `cfg.layer` over `batches`, the cells of the examples (images,
    labels)); with `cfg.png`, the picture of the examples."""
    freq, _ = pick_frequency(model, batches, len(classes), cfg.layer)
    cells = expert_cells(model, examples[0])
    if cfg.png:
        draw_routing_grid(cfg.png, *examples, classes, cells, cfg.layer, freq, marked, title)
    return freq, cells


def route_theory(ckpt_dir: str | Path, cfg: RouteConfig) -> dict:
    """`discriminative_routing` of a theory checkpoint on its test samples (`test_samples` of them), with the run's
    initial weights' under 'initial' when it started from a fresh initialisation."""
    check(cfg.device is None, "device applies to vision checkpoints only (theory models run on the CPU)")
    model, config, _, test_ds = evaluate_checkpoint(ckpt_dir)
    check(len(model.moe_layers()) > 0,
          f"{ckpt_dir} holds a {config['model']['model']!r} model, which has no routers")
    r = {**discriminative_routing(model, test_ds), "test_samples": len(test_ds)}
    initial = initial_theory_model(config)
    if initial is not None:
        r["initial"] = discriminative_routing(initial, test_ds)
    if cfg.png:
        ds = test_ds.subset(torch.arange(min(len(test_ds), cfg.images)))
        labels = (ds.y > 0).long()  # class 1: y=+1
        canvases = lambda idx: torch.stack([canvas_image(ds, i) for i in idx.tolist()]).unsqueeze(1)  # noqa: E731
        idx = examples_per_class(labels, cfg.examples)
        _picture(cfg, model, ((canvases(b), labels[b]) for b in torch.arange(len(ds)).split(BATCH)),
                 (canvases(idx), labels[idx]), ["y=-1", "y=+1"], ds.disc_pos[idx],
                 f"{ckpt_dir}: {config['model']['model']}, l={model.moe.l}; dashed: the class patch")
    return r


def route_vision(ckpt_dir: str | Path, cfg: RouteConfig) -> dict:
    """Pick shares of one MoE layer of a vision checkpoint per class, expert and cell, on up to `cfg.images` test
    images; on patch canvases also the class-patch hits, trained and at the run's initial weights."""
    model, config = load_checkpoint(ckpt_dir)
    name, data = config.get("preset") or config["arch"], config.get("data", {}).get("name")
    layers = len(model.moe_layers())
    check(layers > 0, f"{ckpt_dir} holds a dense {name!r} model, which has no routers")
    check(data is not None, f"{ckpt_dir}/config.json records no data spec; cannot rebuild its test data")
    layer = layer_index(layers, cfg.layer)
    device = resolve_device(cfg.device or "auto")
    ds = typed(ImageDataSpec, config.get("data"), "the data section of config.json").make("test")
    ds = ds.subset(torch.randperm(len(ds), generator=seeded_generator(0))[:cfg.images].sort().values)
    examples = next(iter(ImageBatches(ds.subset(examples_per_class(ds.labels, cfg.examples)), BATCH, device=device)))
    freq, cells = _picture(cfg, model.to(device), ImageBatches(ds, BATCH, device=device), examples, ds.classes,
                           None, f"{ckpt_dir}: {name} on {data}, MoE layer {layer}")
    C, k, gh, gw = freq.shape
    result = {"model": name, "data": data, "layer": layer, "layers": layers, "experts": k, "grid": [gh, gw],
              "cell": cells.cell, "offset": cells.offset, "images": len(ds), "classes": ds.classes,
              "frequency": freq.tolist()}
    if "disc_pos" in ds.attributes:  # canvases: how often the experts' cells cover the class patch
        result["class_patch"] = class_patch_hits(model, ds, layer, BATCH, device)
        initial = initial_model(ckpt_dir)
        if initial is not None:  # the same routers before training: random routers can favour the class patch too
            result["class_patch_initial"] = class_patch_hits(initial, ds, layer, BATCH, device)
    return result
