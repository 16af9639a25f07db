"""The data of a checkpoint, for pruning: test accuracy, calibration batches, example inputs, post-pruning fine-tune.

`pmoe.runs.kinds.make_task(config, device)` reads the `data` section a checkpoint was trained with: a theory `DataSpec` (`pmoe train`,
`pmoe finetune` of theory models) or a vision `ImageDataSpec` (`pmoe train-vision`-style runs and their fine-tunes).
Post-pruning fine-tune (`FinetuneConfig`): vision models take the training recipe of the checkpoint's preset
(`pmoe.train.recipes`, its warm-up capped at 10% of the steps for the ViTs) for `steps` optimizer steps of `fit`, the
config's fields changing single ones of it (the pruning paper's official fine-tune: optimizer sgd, lr 0.01, weight
decay 0, clip_norm 10, momentum 0.9, warm-up then cosine); theory models the paper's recipe (plain SGD, lr 0.2, batch
20) for ceil(steps·20/N) epochs of `pmoe.train.train`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator, Protocol

import torch
from torch import Tensor, nn

from pmoe.data.vision import ImageBatches, ImageDataset, balanced_subset
from pmoe.errors import check
from pmoe.fields import typed
from pmoe.metrics import evaluate
from pmoe.runs.theory import DataSpec
from pmoe.train import TrainConfig, evaluate_images, fit, train
from pmoe.runs.images import ImageDataSpec
from pmoe.train.recipes import FIELDS, RecipeChanges, checkpoint_recipe

RECIPE_FIELDS = tuple(f for f in FIELDS if f != "epochs")  # a post-pruning fine-tune counts steps


@dataclass
class FinetuneConfig(RecipeChanges):
    """A post-pruning fine-tune: `steps` optimizer steps (0 = none); vision checkpoints take their recipe with the
    inherited fields changed (None: keep); its length is `steps`, not epochs."""

    steps: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.epochs is None, f"a post-pruning fine-tune counts steps, not epochs; got epochs={self.epochs}")


class Task(Protocol):
    device: torch.device  # where its batches go

    def evaluate(self, model: nn.Module) -> dict: ...  # {'accuracy', 'loss', ...} on the test split

    def calibration(self, samples: int, batch_size: int = 256) -> Iterator[Tensor]: ...  # training inputs

    def example(self, batch_size: int) -> Tensor: ...  # test inputs, for FLOPs and latency

    def finetune(self, model: nn.Module, cfg: FinetuneConfig) -> None: ...


class TheoryTask:
    """A theory checkpoint's synthetic or patch-canvas data (its `DataSpec`); models stay on the CPU."""

    def __init__(self, config: dict, device: torch.device) -> None:
        check(device.type == "cpu", f"theory models run on the CPU, not on {device}")
        self.device = device
        self.train, self.test = typed(DataSpec, config.get("data"), "the data section of config.json").make()

    def evaluate(self, model: nn.Module) -> dict:
        return evaluate(model, self.test)

    def calibration(self, samples: int, batch_size: int = 256) -> Iterator[Tensor]:
        return iter(self.train.x[:samples].split(batch_size))

    def example(self, batch_size: int) -> Tensor:
        return self.test.x[:batch_size]

    def finetune(self, model: nn.Module, cfg: FinetuneConfig) -> None:
        check(not cfg.changes(), f"the post-pruning fine-tune of a theory model takes the paper's recipe; "
                                 f"{sorted(cfg.changes())} apply to vision checkpoints only")
        tc = TrainConfig(seed=cfg.seed, router_epochs=0, log_routing=False)
        tc.epochs = math.ceil(cfg.steps * tc.batch_size / len(self.train))
        train(model, self.train, self.test, tc, progress=False)


class VisionTask:
    """A vision checkpoint's image data (its `ImageDataSpec`) on `device`."""

    def __init__(self, config: dict, device: torch.device) -> None:
        spec = typed(ImageDataSpec, config.get("data"), "the data section of config.json")
        self.train, self.test, self.device = spec.make("train"), spec.make("test"), device
        self.recipe = checkpoint_recipe(config)

    def _batches(self, ds: ImageDataset, batch_size: int) -> Iterator[Tensor]:
        return (x for x, _ in ImageBatches(ds, batch_size, device=self.device))

    def evaluate(self, model: nn.Module) -> dict:
        return evaluate_images(model, self.test, device=self.device)

    def calibration(self, samples: int, batch_size: int = 256) -> Iterator[Tensor]:
        return self._batches(balanced_subset(self.train, min(samples, len(self.train))), batch_size)

    def example(self, batch_size: int) -> Tensor:
        return next(self._batches(self.test, batch_size))

    def finetune(self, model: nn.Module, cfg: FinetuneConfig) -> None:
        """`cfg.steps` steps of the checkpoint's recipe (batch size at most the training set) with cfg's changes."""
        fc = cfg.apply(self.recipe.fit_config(max_steps=cfg.steps, seed=cfg.seed, device=str(self.device)))
        batch = min(fc.batch_size, len(self.train))
        epochs = math.ceil(cfg.steps / (len(self.train) // batch))
        fit(model, self.train, None, replace(fc, batch_size=batch, epochs=epochs), progress=False)
