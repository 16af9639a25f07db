"""`ARCHS`: architecture name (stored in a checkpoint's config.json) -> its config class and builder."""
from __future__ import annotations

from typing import Callable

from pmoe.errors import check
from pmoe.fields import typed
from pmoe.models.base import MoEModel
from pmoe.models.e3moe import E3Config, E3ViT
from pmoe.models.theory import TheoryConfig, build_theory_model
from pmoe.models.vit import ViT, ViTConfig
from pmoe.models.wrn import WideResNet, WRNConfig

ARCHS: dict[str, tuple[type, Callable[..., MoEModel]]] = {
    "theory": (TheoryConfig, build_theory_model),
    "wrn": (WRNConfig, WideResNet),
    "vit": (ViTConfig, ViT),
    "e3": (E3Config, E3ViT),
}


def build_model(arch: str, config: dict) -> MoEModel:
    """Rebuild a model from its architecture name and config dict (as saved in config.json)."""
    check(arch in ARCHS, f"unknown architecture {arch!r}; expected one of {sorted(ARCHS)}")
    cls, builder = ARCHS[arch]
    return builder(typed(cls, config, f"config of a {arch!r} model"))
