"""`domains`: a mixture of clearly different 28x28 grey-scale image domains built from what is on disk, for
experts that specialise by domain (`pmoe experiment prune-domains`).

Domains (each its own, disjoint range of labels, in the order of `DomainsConfig.domains`):
  fashion    Fashion-MNIST as it is (10 classes): dark background
  inverted   Fashion-MNIST inverted, 255 - x (10 classes): white background
  canvas     the pMoE paper's patch canvases (trouser vs ankle boot among label-irrelevant clothes; 2 classes),
             `canvas_grid`² items, shrunk by average pooling to 28x28
  synthetic  the theory's data model (`pmoe.data.synthetic`, one pattern pair; 2 classes): 7x7 patches of 4x4
             pixels (one patch per token of the tiny ViTs' patch size 4), 128 + 48·x on grey
Every split holds `train_per_domain` (or `test_per_domain`) images of every domain: Fashion-MNIST images drawn
(seeded) from the split's own images, canvases and synthetic samples generated from seeds that differ by split.
`domain` keeps one domain, relabelled 0.. of its classes (a fine-tuning task); the attribute 'domain' and `groups`
hold each image's domain id (its index in `domains`), so evaluation reports accuracy per domain. One normalisation
for every domain (pixels / 255 to [-1, 1]), so one domain alone is fed as in the mixture.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pmoe.data.synthetic import SyntheticConfig, make_synthetic
from pmoe.data.vision.dataset import ImageDataset
from pmoe.data.vision.mnist import CLASSES, CanvasImageConfig, load_canvas_images, load_idx_images
from pmoe.data.vision.splits import SplitConfig, seeded_generator
from pmoe.errors import check

DOMAINS = ("fashion", "inverted", "canvas", "synthetic")
SIDE = 28  # every image is 1 x SIDE x SIDE
SYNTHETIC_GRID, SYNTHETIC_PATCH = 7, 4  # 7x7 patches of 4x4 pixels
CANVAS_CHUNK = 2500  # canvases generated at a time (their full-size floats are grid² x 784 per canvas)
MEAN_STD = ((0.5,), (0.5,))


@dataclass
class DomainsConfig(SplitConfig):
    domains: tuple[str, ...] = DOMAINS  # which domains, in label order (names of DOMAINS)
    train_per_domain: int = 15000  # images of every domain in 'train' (Fashion-MNIST has 60000)
    test_per_domain: int = 2000  # ... in 'test' (Fashion-MNIST has 10000)
    domain: str | None = None  # keep this domain only, labels 0.. of its classes (a fine-tuning task)
    seed: int = 0  # which images, canvases and synthetic samples
    canvas_grid: int = 2  # canvas: grid x grid Fashion-MNIST items, pooled by canvas_grid to 28x28
    synthetic_noise: float = 0.3  # synthetic: noise std per coordinate (patterns have unit rms entries)

    def __post_init__(self) -> None:
        SplitConfig.__post_init__(self)
        self.domains = tuple(self.domains)  # JSON and the CLI give a list
        check(len(self.domains) >= 1 and len(set(self.domains)) == len(self.domains)
              and set(self.domains) <= set(DOMAINS),
              f"domains must be distinct names of {list(DOMAINS)}, got {list(self.domains)}")
        check(self.domain is None or self.domain in self.domains,
              f"domain must be one of the domains {list(self.domains)} (or None), got {self.domain!r}")
        check(1 <= self.train_per_domain <= 60000 and 1 <= self.test_per_domain <= 10000,
              f"train_per_domain must lie in [1, 60000] and test_per_domain in [1, 10000] (Fashion-MNIST's split "
              f"sizes), got {self.train_per_domain}, {self.test_per_domain}")
        check(isinstance(self.canvas_grid, int) and self.canvas_grid >= 2,
              f"canvas_grid must be an integer >= 2, got {self.canvas_grid}")
        check(self.synthetic_noise >= 0, f"synthetic_noise must be >= 0, got {self.synthetic_noise}")


def domain_classes(name: str) -> list[str]:
    """Class names of domain `name`, prefixed with it."""
    base = {"fashion": CLASSES["fashion-mnist"], "inverted": CLASSES["fashion-mnist"],
            "canvas": ["Ankle boot (y=-1)", "Trouser (y=+1)"], "synthetic": ["y=-1", "y=+1"]}[name]
    return [f"{name}:{c}" for c in base]


def _fashion(data_dir: str, split: str, count: int, seed: int, invert: bool) -> tuple[Tensor, Tensor]:
    ds = load_idx_images("fashion-mnist", data_dir, split)
    idx = torch.randperm(len(ds), generator=seeded_generator(seed, int(invert), int(split == "test")))[:count]
    images = ds.images[idx]  # (count, 1, 28, 28)
    return (255 - images if invert else images), ds.labels[idx]


def _canvas(data_dir: str, split: str, count: int, seed: int, grid: int) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for c, start in enumerate(range(0, count, CANVAS_CHUNK)):
        n = max(2, min(CANVAS_CHUNK, count - start))
        cfg = CanvasImageConfig(grid=grid, data_dir=data_dir, num_samples=n, seed=1000 * seed + c)
        ds = load_canvas_images(cfg, split)  # (n, 1, 28·grid, 28·grid)
        images.append(F.avg_pool2d(ds.images.float(), grid).round_().to(torch.uint8))  # (n, 1, 28, 28)
        labels.append(ds.labels)
    return torch.cat(images)[:count], torch.cat(labels)[:count]


def _synthetic(split: str, count: int, seed: int, noise: float) -> tuple[Tensor, Tensor]:
    g, p = SYNTHETIC_GRID, SYNTHETIC_PATCH
    cfg = SyntheticConfig(n=g * g, d=p * p, noise=noise, pattern_scale=float(p))  # unit rms entries
    pd = make_synthetic(cfg, max(count, 2), 2 * seed + (split == "test"))  # x (N, 49, 16)
    x = pd.x[:count].reshape(-1, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(-1, 1, g * p, g * p)  # (N, 1, 28, 28)
    return (128 + 48 * x).round_().clamp_(0, 255).to(torch.uint8), (pd.y[:count] > 0).long()


def _domain(name: str, cfg: DomainsConfig, data_dir: str, split: str) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 1, 28, 28) and labels (N,) in 0.. of the domain's classes."""
    count = cfg.test_per_domain if split == "test" else cfg.train_per_domain
    if name in ("fashion", "inverted"):
        return _fashion(data_dir, split, count, cfg.seed, name == "inverted")
    if name == "canvas":
        return _canvas(data_dir, split, count, cfg.seed, cfg.canvas_grid)
    return _synthetic(split, count, cfg.seed, cfg.synthetic_noise)


def load_domains(cfg: DomainsConfig, data_dir: str | os.PathLike, split: str) -> ImageDataset:
    """Split 'train' | 'test' of the mixture (or of `cfg.domain` alone): uint8 (N, 1, 28, 28), domain by domain."""
    names = (cfg.domain,) if cfg.domain is not None else cfg.domains
    images, labels, ids, classes = [], [], [], []
    for name in names:
        x, y = _domain(name, cfg, str(data_dir), split)
        images.append(x)
        labels.append(y + len(classes))
        ids.append(torch.full((len(y),), cfg.domains.index(name), dtype=torch.long))
        classes += domain_classes(name)
    domain = torch.cat(ids)
    return ImageDataset(torch.cat(images), torch.cat(labels), classes, *MEAN_STD, groups=domain,
                        attributes={"domain": domain},
                        meta={"name": "domains", "data_dir": str(data_dir), "split": split,
                              "domains": list(cfg.domains), "domain": cfg.domain})
