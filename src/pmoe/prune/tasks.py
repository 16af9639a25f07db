"""The data of a checkpoint, for pruning: test accuracy, calibration batches, example inputs, post-pruning fine-tune.

`make_task(config)` reads the `data` section a checkpoint was trained with: a theory `DataSpec` (`pmoe train`,
`pmoe finetune` of theory models) or a vision `ImageDataSpec` (`pmoe train-vision`-style runs and their fine-tunes).
Post-pruning fine-tune (`FinetuneConfig`): vision models take the official recipe (SGD momentum 0.9, linear warm-up
then cosine, gradient clipping at 10, no weight decay) for `steps` optimizer steps of `fit`, batch size and
augmentation as the checkpoint was trained; theory models the paper's recipe (plain SGD, lr 0.2, batch 20) for
ceil(steps·20/N) epochs of `pmoe.train.train`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
from torch import Tensor, nn

from pmoe.data.vision import ImageBatches, ImageDataset, balanced_subset
from pmoe.errors import check
from pmoe.metrics import evaluate
from pmoe.runs import DataSpec
from pmoe.train import FitConfig, OptimConfig, TrainConfig, evaluate_images, fit, train
from pmoe.train.image_runs import ImageDataSpec


@dataclass
class FinetuneConfig:
    steps: int = 0  # optimizer steps after pruning; 0 = none
    lr: float = 0.01  # peak learning rate (vision)
    warmup_steps: int | None = None  # linear warm-up (vision); None = steps // 10
    clip_norm: float = 10.0  # gradient clipping by global norm (vision)
    seed: int = 0


class Task(Protocol):
    def evaluate(self, model: nn.Module) -> dict: ...  # {'accuracy', 'loss', ...} on the test split

    def calibration(self, samples: int, batch_size: int = 256) -> Iterator[Tensor]: ...  # training inputs

    def example(self, batch_size: int) -> Tensor: ...  # test inputs, for FLOPs and latency

    def finetune(self, model: nn.Module, cfg: FinetuneConfig) -> None: ...


class TheoryTask:
    """A theory checkpoint's synthetic or patch-canvas data (its `DataSpec`); models stay on the CPU."""

    def __init__(self, config: dict) -> None:
        self.train, self.test = DataSpec(**config["data"]).make()

    def evaluate(self, model: nn.Module) -> dict:
        return evaluate(model, self.test)

    def calibration(self, samples: int, batch_size: int = 256) -> Iterator[Tensor]:
        return iter(self.train.x[:samples].split(batch_size))

    def example(self, batch_size: int) -> Tensor:
        return self.test.x[:batch_size]

    def finetune(self, model: nn.Module, cfg: FinetuneConfig) -> None:
        tc = TrainConfig(seed=cfg.seed, router_epochs=0, log_routing=False)
        tc.epochs = math.ceil(cfg.steps * tc.batch_size / len(self.train))
        train(model, self.train, self.test, tc, progress=False)


class VisionTask:
    """A vision checkpoint's image data (its `ImageDataSpec`) on `device`."""

    def __init__(self, config: dict, device: torch.device) -> None:
        spec = ImageDataSpec(**config["data"])
        self.train, self.test, self.device = spec.make("train"), spec.make("test"), device
        self.fit = config.get("fit", {})

    def _batches(self, ds: ImageDataset, batch_size: int) -> Iterator[Tensor]:
        return (x for x, _ in ImageBatches(ds, batch_size, device=self.device))

    def evaluate(self, model: nn.Module) -> dict:
        return evaluate_images(model, self.test, device=self.device)

    def calibration(self, samples: int, batch_size: int = 256) -> Iterator[Tensor]:
        return self._batches(balanced_subset(self.train, min(samples, len(self.train))), batch_size)

    def example(self, batch_size: int) -> Tensor:
        return next(self._batches(self.test, batch_size))

    def finetune(self, model: nn.Module, cfg: FinetuneConfig) -> None:
        batch = min(self.fit.get("batch_size", 128), len(self.train))
        optim = OptimConfig("sgd", cfg.lr, momentum=0.9, weight_decay=0.0, clip_norm=cfg.clip_norm,
                            warmup_steps=cfg.steps // 10 if cfg.warmup_steps is None else cfg.warmup_steps)
        fit(model, self.train, None, FitConfig(epochs=math.ceil(cfg.steps / (len(self.train) // batch)),
                                              max_steps=cfg.steps, batch_size=batch, optim=optim,
                                              augment=self.fit.get("augment", True), seed=cfg.seed,
                                              device=str(self.device)), progress=False)


def make_task(config: dict, device: torch.device) -> Task:
    """The task of a checkpoint config (its `data` section)."""
    check("data" in config, "the checkpoint's config.json records no data spec: its test data cannot be rebuilt")
    return TheoryTask(config) if config["arch"] == "theory" else VisionTask(config, device)
