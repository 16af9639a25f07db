"""Where a WRN-pMoE's routers send the class signal in a first run: coverage, router alignment and blob hit rate.

Trains WRN-pMoE settings with their preset's default recipe (`fit`, as `pmoe train` does) on blob images, the data of
`learnable_cifar10` in tests/test_recipes.py (grey noise, a 10x10 square of the class colour at a random place;
2000 training images of seed 0, 500 test images of seed 1), and reports, on the training set in eval mode, at
initialisation and after every epoch:

  cover     share of the n regions of an image that at least one expert takes (1 - (1 - l/n)^k for independent
            routers: 0.68 at k=4, l/n=1/4; l/n = 0.25 when all experts take the same regions)
  cos       mean cosine between the k router vectors (0 for independent random vectors)
  pc1       share of the within-image variance of the router inputs (the regions' features) along their top
            principal direction
  hit_any   share of the regions the blob overlaps that at least one expert takes (chance: cover)
  hit       the same for one expert, averaged over the experts (chance: l/n)

    python examples/wrn_pmoe_routing.py --specs wrn-pmoe-tiny "wrn-pmoe-tiny:gate=softmax_all,gate_activations=false" \
        --seeds 0 1 2 --out docs/results/first-run/wrn-pmoe-tiny-routing
"""
from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pmoe.data.vision import ImageBatches, ImageDataset
from pmoe.data.vision.dataset import STATS
from pmoe.models.presets import PRESETS, build_preset
from pmoe.options import parse_spec
from pmoe.train import fit
from pmoe.train.evaluate import evaluate_images
from pmoe.train.recipes import recipe_for

COLOURS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [250, 190, 190], [0, 128, 128]])  # as tests/test_recipes.py
SIDE, BLOB = 32, 10


def blob_data(n: int, seed: int) -> tuple[ImageDataset, np.ndarray]:
    """`blob_images` of tests/test_recipes.py as a CIFAR-10 data set, and each blob's top-left corner (n, 2)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    x = rng.normal(128, 60, (n, 3, SIDE, SIDE))
    corners = rng.integers(0, SIDE - BLOB + 1, (n, 2))
    for i, (r, c) in enumerate(corners):
        x[i, :, r:r + BLOB, c:c + BLOB] = COLOURS[labels[i], :, None, None] + rng.normal(0, 20, (3, BLOB, BLOB))
    images = torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8))
    ds = ImageDataset(images, torch.from_numpy(labels), [f"c{i}" for i in range(10)], *STATS["cifar10"])
    return ds, corners


def blob_regions(corners: np.ndarray, rows: int) -> Tensor:
    """(N, rows*rows) bool: the regions (of SIDE/rows px, row-major) that each blob overlaps."""
    px = SIDE // rows
    out = np.zeros((len(corners), rows, rows), bool)
    for i, (r, c) in enumerate(corners):
        out[i, r // px:(r + BLOB - 1) // px + 1, c // px:(c + BLOB - 1) // px + 1] = True
    return torch.from_numpy(out.reshape(len(corners), -1))


@dataclass
class Routing:
    cover: float
    cos: float
    pc1: float
    hit_any: float
    hit: float


@torch.no_grad()
def routing_stats(model: torch.nn.Module, ds: ImageDataset, blobs: Tensor, train_mode: bool) -> Routing:
    """Routing of `model` over `ds` (eval mode, or train mode on a copy: batch statistics, for the untrained model)."""
    model = copy.deepcopy(model).train(train_mode)
    moe, inputs, picks = model.moe, [], []
    hook = moe.register_forward_pre_hook(lambda m, args: inputs.append(args[0].float()))
    for x, _ in ImageBatches(ds, 500):
        model(x)
        r = moe.last_routing
        picks.append(torch.zeros(*r.index.shape[:2], blobs.shape[1]).scatter_(2, r.index, 1.0))  # (B, k, n)
    hook.remove()
    picked, regions = torch.cat(picks), torch.cat(inputs)  # (N, k, n), (N, n, d)
    blob = blobs.float()[:, None]  # (N, 1, n)
    w = torch.nn.functional.normalize(moe.router.weight.float(), dim=1)
    k = len(w)
    centred = (regions - regions.mean(1, keepdim=True)).flatten(0, 1)  # (N*n, d)
    s = torch.linalg.svdvals(centred)
    return Routing(cover=(picked.amax(1)).mean().item(), cos=((w @ w.T).sum().item() - k) / (k * (k - 1)),
                   pc1=(s[0] ** 2 / (s ** 2).sum()).item(),
                   hit_any=((picked.amax(1, keepdim=True) * blob).sum() / blob.sum()).item(),
                   hit=((picked * blob).sum() / (blob.sum() * k)).item())


def run(spec: str, seed: int, epochs: int) -> dict:
    """Train `spec` (PRESET or PRESET:KEY=VALUE,...) with its preset's recipe; routing at init and every epoch."""
    name, options = parse_spec(spec, PRESETS)
    train, corners = blob_data(2000, 0)
    test, _ = blob_data(500, 1)
    torch.manual_seed(seed)
    model = build_preset(name, **options)
    blobs = blob_regions(corners, model.config.map_size // model.config.region)
    trace = [{"epoch": 0, **vars(routing_stats(model, train, blobs, train_mode=True))}]

    def on_epoch(record: dict) -> None:
        trace.append({"epoch": record["epoch"], **vars(routing_stats(model, train, blobs, train_mode=False))})

    cfg = replace(recipe_for(name).fit_config(seed=seed, device="cpu"), epochs=epochs)
    fit(model, train, None, cfg, progress=False, on_epoch=on_epoch)
    return {"spec": spec, "seed": seed, "test_accuracy": evaluate_images(model, test)["accuracy"], "trace": trace}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--specs", nargs="+", default=["wrn-pmoe-tiny"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run(spec, seed, args.epochs) for spec in args.specs for seed in args.seeds]
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| setting | seed | test acc | epoch | cover | cos | pc1 | hit_any | hit |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['spec']} | {r['seed']} | {r['test_accuracy']:.3f} | {t['epoch']} | {t['cover']:.2f} "
              f"| {t['cos']:.2f} | {t['pc1']:.2f} | {t['hit_any']:.2f} | {t['hit']:.2f} |"
              for r in rows for t in r["trace"]]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
