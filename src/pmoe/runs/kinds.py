"""One seam for the two kinds of run: theory models on patch data (`pmoe.runs.theory`) and vision presets on image
data sets (`pmoe.runs.images`). The commands ask `kind_of_model` or `kind_of_checkpoint` and call its entries, which
take the same arguments for both kinds; the data spec and training config are the kind's own (theory: `DataSpec`,
`TrainConfig` with the paper's recipe; vision: `ImageDataSpec`, `FitConfig` from the preset's recipe).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pmoe.checkpoints import read_config
from pmoe.errors import check
from pmoe.models import THEORY_MODELS
from pmoe.models.presets import PRESETS
from pmoe.runs import images, route, summaries, theory
from pmoe.runs.route import RouteConfig
from pmoe.runs.tasks import Task, TheoryTask, VisionTask
from pmoe.train import resolve_device


@dataclass(frozen=True)
class RunKind:
    name: str  # theory | vision
    models: tuple[str, ...]  # the model names `train` takes
    archs: tuple[str, ...]  # the architectures of its checkpoints (config.json's "arch")
    resumable: bool  # runs write their folder as they go and continue with resume=True
    train: Callable[..., dict]  # (model, data, cfg, out_dir, overrides, resume, progress) -> result
    finetune: Callable[..., dict]  # (pretrained_dir, data, cfg, out_dir, resume, progress) -> result
    evaluate: Callable[..., dict]  # (ckpt_dir, split, device) -> result
    route: Callable[[str | Path, RouteConfig], dict]  # (ckpt_dir, cfg) -> routing report
    task: Callable[[dict, torch.device], Task]  # (checkpoint config, device) -> its data, for pruning
    device: Callable[[str], torch.device]  # the device its models run on, for a --device value
    eval_lines: Callable[[dict], list[str]]  # the human form of an `evaluate` result
    route_lines: Callable[[dict], list[str]]  # the human form of a `route` report


def theory_device(name: str) -> torch.device:
    """The CPU, for --device auto or cpu: theory models run on the CPU."""
    check(name in ("auto", "cpu"), f"theory models run on the CPU: device must be 'auto' or 'cpu', got {name!r}")
    return torch.device("cpu")


THEORY = RunKind("theory", THEORY_MODELS, ("theory",), False, theory.train_theory, theory.finetune_theory,
                 theory.evaluate_theory, route.route_theory, TheoryTask, theory_device,
                 summaries.theory_eval_lines, summaries.theory_route_lines)
VISION = RunKind("vision", tuple(PRESETS), images.VISION_ARCHS, True, images.train_preset, images.finetune_preset,
                 images.evaluate_run, route.route_vision, VisionTask, resolve_device, summaries.vision_eval_lines,
                 summaries.vision_route_lines)
KINDS = (THEORY, VISION)


def kind_of_model(name: str) -> RunKind:
    """The kind of run that trains model `name` (a theory model or a vision preset)."""
    kind = next((k for k in KINDS if name in k.models), None)
    check(kind is not None, f"unknown model {name!r}; expected one of {[m for k in KINDS for m in k.models]}")
    return kind


def kind_of_arch(arch: str) -> RunKind:
    kind = next((k for k in KINDS if arch in k.archs), None)
    check(kind is not None, f"unknown architecture {arch!r}; expected one of {[a for k in KINDS for a in k.archs]}")
    return kind


def kind_of_checkpoint(ckpt_dir: str | Path) -> RunKind:
    """The kind of run that made checkpoint `ckpt_dir` (read from its config.json)."""
    return kind_of_arch(read_config(ckpt_dir)["arch"])


def make_task(config: dict, device: str = "auto") -> Task:
    """The data of a checkpoint config (its `data` section) on the device its kind runs on (`device`: vision)."""
    check("data" in config, "the checkpoint's config.json records no data spec: its test data cannot be rebuilt")
    kind = kind_of_arch(config["arch"])
    return kind.task(config, kind.device(device))
