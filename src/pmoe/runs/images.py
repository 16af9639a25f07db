"""Vision runs from a spec, for the CLI: train a preset on an image data set, fine-tune a checkpoint, evaluate one.

A run's folder is `fit`'s checkpoint plus the sections `preset`, `data` (an `ImageDataSpec`, enough to rebuild the
data), `recipe` (the training recipe its `fit` settings start from: name, source, fields changed), `pretrained`
(fine-tuning: parent path and weights' SHA-256) and, once done, `result`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pmoe.checkpoints import (CONFIG, build_from_config, load_checkpoint, load_state, read_config, read_weights,
                              weights_sha256)
from pmoe.data.vision import ImageDataset, balanced_subset, make_image_dataset
from pmoe.errors import PmoeError, check
from pmoe.fields import typed
from pmoe.io import write_json
from pmoe.models.presets import build_preset, preset
from pmoe.runs.theory import num_params
from pmoe.train.distributed.data import evaluate_sharded
from pmoe.train.distributed.mesh import is_main_process, world_size
from pmoe.train.evaluate import evaluate_images
from pmoe.train.recipes import record
from pmoe.train.vision import FitConfig, fit, resolve_device

VISION_ARCHS = ("wrn", "vit", "e3")


@dataclass
class ImageDataSpec:
    name: str = "fashion-mnist"  # a key of IMAGE_DATASETS
    data_dir: str | None = None  # None: the data set's default folder
    samples: int | None = None  # a balanced subset of the train split; None: all of it
    test_samples: int | None = None  # a balanced subset of the test split; None: all of it
    seed: int = 0  # which subsets
    options: dict = field(default_factory=dict)  # fields of the data set's config (val_fraction, image_size, ...)

    def __post_init__(self) -> None:
        if self.data_dir is not None:  # recorded absolute: read back from any folder, a run finds the same data
            self.data_dir = os.path.abspath(os.path.expanduser(self.data_dir))

    def make(self, split: str) -> ImageDataset:
        """Split `split`, as a balanced subset of `samples` (train) or `test_samples` (test) where given; PmoeError
        for an empty split or a subset larger than it."""
        ds = make_image_dataset(self.name, split, self.data_dir, **self.options)
        where = f"the {split} split of {self.name!r}{f' in {self.data_dir}' if self.data_dir else ''}"
        check(len(ds) > 0, f"{where} holds no images" + (" (val_fraction is 0: no validation split is held out)"
                                                         if split == "val" else ""))
        n, flag = {"train": (self.samples, "--samples"), "test": (self.test_samples, "--test-samples")}.get(
            split, (None, ""))
        check(n is None or n <= len(ds), f"{flag} {n} is more than the {len(ds)} images of {where}")
        return balanced_subset(ds, n, self.seed) if n is not None else ds

    def make_train_test(self) -> tuple[ImageDataset, ImageDataset]:
        """The train and test splits, whose images must have one shape (checked before any training)."""
        train, test = self.make("train"), self.make("test")
        check(train.image_shape == test.image_shape,
              f"the test split of {self.name!r} has images of {'x'.join(map(str, test.image_shape))} (CxHxW) but the "
              f"train split {'x'.join(map(str, train.image_shape))}; give --data-opt image_size=N to resize both "
              "(file-backed data sets)")
        return train, test


def build_for_data(name: str, ds: ImageDataset, overrides: dict | None = None) -> nn.Module:
    """Preset `name` for images like `ds`: its channels and classes, built for its image side (image_size), or, where
    the preset cannot be and the side is smaller than the preset's, zero-padding the images into it (input_size).
    `overrides` (preset fields) win."""
    C, H, W = ds.image_shape
    check(H == W, f"the vision models take square images; {ds!r} has {H}x{W}")
    data = {"in_channels": C, "num_classes": ds.num_classes}
    clash = [f"{k}={overrides[k]}" for k, v in data.items() if k in (overrides or {}) and overrides[k] != v]
    check(not clash, f"{', '.join(clash)} does not fit the data ({C} channels, {ds.num_classes} classes): these "
                     "come from the data; leave them out")
    base = {**data, **(overrides or {})}
    if "image_size" in base or "input_size" in base:
        return build_preset(name, **base)
    try:
        return build_preset(name, image_size=H, **base)
    except PmoeError:
        if H >= preset(name)[1].image_size:
            raise
    return build_preset(name, input_size=H, **base)


def load_for_data(ckpt_dir: str | Path, ds: ImageDataset) -> tuple[nn.Module, dict]:
    """The vision model of `ckpt_dir` for data like `ds`, with a fresh head (the architecture's initialisation) when
    the number of classes differs; everything else loaded. Returns (model, its 'pretrained' section)."""
    cfg = read_config(ckpt_dir)
    check(cfg["arch"] in VISION_ARCHS, f"{ckpt_dir} holds a {cfg['arch']!r} model, not a vision model {VISION_ARCHS}")
    model_cfg = dict(cfg["model"])
    side, C = model_cfg["input_size"] or model_cfg["image_size"], model_cfg["in_channels"]
    check(ds.image_shape == (C, side, side), f"{ckpt_dir} holds a model of {C}x{side}x{side} images (CxHxW); the "
          f"data set {ds.meta.get('name')!r} has {'x'.join(map(str, ds.image_shape))}: pick data of that shape")
    new_head = model_cfg["num_classes"] != ds.num_classes
    model = build_from_config(cfg, num_classes=ds.num_classes)  # pruned checkpoints keep their pruned shape
    weights = read_weights(ckpt_dir)
    if new_head:
        fresh = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
        weights = {**{k: v for k, v in weights.items() if not k.startswith("head.")}, **fresh}
    load_state(model, weights, str(Path(ckpt_dir)))
    return model, {"path": str(Path(ckpt_dir).resolve()), "sha256": weights_sha256(ckpt_dir),
                   "preset": cfg.get("preset"), "num_classes": model_cfg["num_classes"],
                   "head": "new" if new_head else "kept"}


def initial_model(ckpt_dir: str | Path) -> nn.Module | None:
    """The weights the `train_preset` run in `ckpt_dir` started from (rebuilt from its config and fit seed), or None
    for a run that did not start from a fresh initialisation (fine-tuned or pruned)."""
    cfg = read_config(ckpt_dir)
    if "fit" not in cfg or "pretrained" in cfg or "pruning" in cfg:
        return None
    torch.manual_seed(cfg["fit"]["seed"])  # as train_preset, right before it builds the model
    return build_from_config(cfg)


def finished(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds a vision run that has run all its steps."""
    path = Path(out_dir) / CONFIG
    return path.is_file() and read_config(out_dir).get("progress", {}).get("finished", False)


def train_preset(name: str, data: ImageDataSpec, cfg: FitConfig, out_dir: str | Path,
                 overrides: dict | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train preset `name` on `data` into `out_dir` (or resume it); returns the result, also saved in config.json."""
    start = time.perf_counter()
    train_ds, test_ds = data.make_train_test()
    torch.manual_seed(cfg.seed)
    model = build_for_data(name, train_ds, overrides)
    return _fit(model, name, data, train_ds, test_ds, cfg, out_dir, resume, progress, start)


def finetune_preset(pretrained: str | Path, data: ImageDataSpec, cfg: FitConfig, out_dir: str | Path,
                    resume: bool = False, progress: bool = True) -> dict:
    """Fine-tune the vision checkpoint `pretrained` on `data` into `out_dir` (or resume); returns the result."""
    start = time.perf_counter()
    train_ds, test_ds = data.make_train_test()
    torch.manual_seed(cfg.seed)
    model, parent = load_for_data(pretrained, train_ds)
    pruning = read_config(pretrained).get("pruning")  # a pruned parent's record keeps the child loadable
    return _fit(model, parent["preset"], data, train_ds, test_ds, cfg, out_dir, resume, progress, start,
                pretrained=parent, **({"pruning": pruning} if pruning else {}))


def _fit(model: nn.Module, name: str | None, data: ImageDataSpec, train_ds: ImageDataset, test_ds: ImageDataset,
         cfg: FitConfig, out_dir: str | Path, resume: bool, progress: bool, start: float, **meta: dict) -> dict:
    recipe = {"recipe": record(cfg)} if cfg.recipe is not None else {}
    saved = read_config(out_dir).get("result") if resume and finished(out_dir) else None
    history = fit(model, train_ds, test_ds, cfg, out_dir, resume, progress,
                  checkpoint_meta={"preset": name, "data": dataclasses.asdict(data), **recipe, **meta})
    if saved is not None:  # a finished run resumed: its result as saved, nothing rewritten
        return saved
    last = history[-1]
    evaluate = evaluate_sharded if world_size() > 1 else evaluate_images  # under torchrun: each rank a part
    tr = evaluate(model, train_ds, cfg.eval_batch_size, next(model.parameters()).device, cfg.num_workers)
    result = {"model": name, "data": data.name, "samples": len(train_ds), "test_samples": len(test_ds),
              "seed": cfg.seed, "epochs": last["epoch"], "steps": last["step"],
              "test_accuracy": last["eval_accuracy"], "test_loss": last["eval_loss"],
              **{k: last[f"eval_{k}"] for k in ("worst_group_accuracy", "group_accuracy") if f"eval_{k}" in last},
              "train_accuracy": tr["accuracy"], "train_loss": tr["loss"], **num_params(model),
              "images_per_second": sum(r["images_per_second"] for r in history) / len(history),
              "train_seconds": last["seconds"], "seconds": round(time.perf_counter() - start, 3),
              "device": str(resolve_device(cfg.device))}
    if is_main_process():  # under torchrun, rank 0 writes the folder
        write_json(Path(out_dir) / CONFIG, {**read_config(out_dir), "result": result})
    return result


def evaluate_run(ckpt_dir: str | Path, split: str | None = "test", device: str | None = "auto",
                 batch_size: int = 512) -> dict:
    """Evaluate the vision checkpoint `ckpt_dir` on `split` (None: test) of the data it was made with (rebuilt from
    config.json), on `device` (None: auto)."""
    split, device = split or "test", device or "auto"
    model, cfg = load_checkpoint(ckpt_dir)
    check("data" in cfg, f"{ckpt_dir}/{CONFIG} records no data spec; cannot rebuild its data")
    ds = typed(ImageDataSpec, cfg.get("data"), "the data section of config.json").make(split)
    ev = evaluate_images(model.to(resolve_device(device)), ds, batch_size)
    return {"checkpoint": str(ckpt_dir), "model": cfg.get("preset") or cfg["arch"], "data": cfg["data"]["name"],
            "split": split, "samples": len(ds), "epochs": cfg.get("progress", {}).get("epoch"),
            **{f"{split}_{k}" if k in ("loss", "accuracy") else k: v for k, v in ev.items()}, **num_params(model)}
