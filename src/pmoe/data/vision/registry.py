"""`make_image_dataset`: every image data set by name, its options the fields of a dataclass config."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pmoe.data.idx import DEFAULT_DATA_DIR
from pmoe.data.vision.celeba import CelebAConfig, load_celeba
from pmoe.data.vision.cifar import load_cifar
from pmoe.data.vision.dataset import ImageDataset
from pmoe.data.vision.domains import DomainsConfig, load_domains
from pmoe.data.vision.files import IMAGE_KINDS, FileImageConfig
from pmoe.data.vision.folder import ImageFolderConfig, load_image_folder
from pmoe.data.vision.mnist import CLASSES, CanvasImageConfig, load_canvas_images, load_idx_images
from pmoe.data.vision.splits import SPLITS, SplitConfig, train_val_test
from pmoe.data.vision.spurious import attribute, attribute_contrast, class_sets, make_spurious, stamp_corner
from pmoe.errors import check
from pmoe.fields import check_fields
from pmoe.outputs import DATA_ROOT

DATASETS_ROOT = DATA_ROOT  # default data_dir: DATASETS_ROOT/<name> (Fashion-MNIST's apt package's)


@dataclass
class Cifar100Config(SplitConfig):
    coarse: bool = False  # label by the 20 superclasses instead of the 100 classes


@dataclass
class SpuriousConfig:
    train_ratio: float = 0.95  # share of each class whose nuisance agrees with its label, in train and val
    test_ratio: float = 0.5  # the same in test; 0.5 = nuisance independent of the label
    num_samples: int | None = None  # samples of the split asked for (even); None = all that the ratio allows
    seed: int = 0  # seed of the subsampling (and of the stamps)


@dataclass
class FashionSpuriousConfig(SpuriousConfig, SplitConfig):
    # Label 1: Coat, Shirt; label 0: T-shirt/top, Pullover; the other classes are left out. Two pairs that
    # Fashion-MNIST models confuse most, so the label is harder to read than the nuisance.
    positive: tuple[int, ...] = (4, 6)
    negative: tuple[int, ...] = (0, 2)
    stamp_size: int = 4  # the nuisance: a white stamp_size² square in the top-left corner of half the images


@dataclass
class CelebASpuriousConfig(SpuriousConfig, FileImageConfig):
    label: str = "Smiling"  # the binary label
    nuisance: tuple[str, str] = ("Blond_Hair", "Black_Hair")  # nuisance 1 / 0; images with neither or both left out


def _ratio(cfg: SpuriousConfig, split: str) -> float:
    return cfg.test_ratio if split == "test" else cfg.train_ratio


def _fashion_spurious(cfg: FashionSpuriousConfig, data_dir: str, split: str) -> ImageDataset:
    base = train_val_test(lambda s: load_idx_images("fashion-mnist", data_dir, s), split, cfg)
    names = CLASSES["fashion-mnist"]
    return make_spurious(stamp_corner(base, cfg.stamp_size, 255, cfg.seed), class_sets(cfg.positive, cfg.negative),
                         attribute("stamp"), _ratio(cfg, split), cfg.num_samples, cfg.seed,
                         ("/".join(names[c] for c in cfg.negative), "/".join(names[c] for c in cfg.positive)))


def _celeba_spurious(cfg: CelebASpuriousConfig, data_dir: str, split: str) -> ImageDataset:
    base = load_celeba(data_dir, split, CelebAConfig(cfg.image_size, cfg.center_crop, (cfg.label,)))
    return make_spurious(base, attribute(cfg.label), attribute_contrast(*cfg.nuisance), _ratio(cfg, split),
                         cfg.num_samples, cfg.seed, (f"not {cfg.label}", cfg.label))


class _Spec(NamedTuple):
    config: type  # dataclass of the options
    load: Callable[[Any, str, str], ImageDataset]  # (config, data_dir, split) -> data set
    default_dir: str | None  # data_dir when none is given


def _carved(load: Callable[[Any, str, str], ImageDataset]) -> Callable[[Any, str, str], ImageDataset]:
    """`load` of 'train' | 'test' serving 'val' too, held out of train as its SplitConfig says."""
    return lambda cfg, d, split: train_val_test(lambda s: load(cfg, d, s), split, cfg)


IMAGE_DATASETS: dict[str, _Spec] = {
    "mnist": _Spec(SplitConfig, _carved(lambda cfg, d, s: load_idx_images("mnist", d, s)),
                   f"{DATASETS_ROOT}/mnist"),
    "fashion-mnist": _Spec(SplitConfig, _carved(lambda cfg, d, s: load_idx_images("fashion-mnist", d, s)),
                           DEFAULT_DATA_DIR),
    "cifar10": _Spec(SplitConfig, _carved(lambda cfg, d, s: load_cifar(10, d, s)), f"{DATASETS_ROOT}/cifar10"),
    "cifar100": _Spec(Cifar100Config, _carved(lambda cfg, d, s: load_cifar(100, d, s, cfg.coarse)),
                      f"{DATASETS_ROOT}/cifar100"),
    "celeba": _Spec(CelebAConfig, lambda cfg, d, split: load_celeba(d, split, cfg), f"{DATASETS_ROOT}/celeba"),
    "imagefolder": _Spec(ImageFolderConfig, lambda cfg, d, split: load_image_folder(d, split, cfg), None),
    "fashion-patches-image": _Spec(CanvasImageConfig, _carved(
        lambda cfg, d, s: load_canvas_images(dataclasses.replace(cfg, data_dir=d), s)), DEFAULT_DATA_DIR),
    "fashion-spurious": _Spec(FashionSpuriousConfig, _fashion_spurious, DEFAULT_DATA_DIR),
    "celeba-spurious": _Spec(CelebASpuriousConfig, _celeba_spurious, f"{DATASETS_ROOT}/celeba"),
    "domains": _Spec(DomainsConfig, _carved(load_domains), DEFAULT_DATA_DIR),
}


def make_image_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None,
                       **options) -> ImageDataset:
    """Split 'train' | 'val' | 'test' of image data set `name`; `options` set IMAGE_DATASETS[name].config.

    data_dir defaults to DATASETS_ROOT/<name> (Fashion-MNIST's folder for the sets built from it).
    """
    check(name in IMAGE_DATASETS, f"unknown image data set {name!r}; valid names: {', '.join(IMAGE_DATASETS)}")
    check(split in SPLITS, f"split must be one of {SPLITS}, got {split!r}")
    spec = IMAGE_DATASETS[name]
    check_fields(spec.config, options, f"options of image data set {name!r}", hidden=("data_dir",))
    data_dir = data_dir if data_dir is not None else spec.default_dir
    check(data_dir is not None, f"image data set {name!r} needs a data_dir: the root of a tree "
          f"train/<class>/<images: {IMAGE_KINDS}> (val/<class>/..., test/<class>/... optional)")
    ds = spec.load(spec.config(**options), str(data_dir), split)
    ds.meta.update(name=name, split=split)
    return ds
