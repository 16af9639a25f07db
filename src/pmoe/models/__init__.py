"""Model families, each built from a dataclass config that is saved beside its weights.

`ARCHS` maps an architecture name (stored in a checkpoint's config.json) to its config class and builder.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from pmoe.errors import check
from pmoe.fields import typed
from pmoe.models.e3moe import E3Config, E3ViT
from pmoe.models.theory import (THEORY_MODELS, MixtureOfCNNs, TheoryConfig, TwoLayerCNN, build_theory_model,
                                theory_config)
from pmoe.models.vit import ViT, ViTConfig
from pmoe.models.wrn import WideResNet, WRNConfig

ARCHS: dict[str, tuple[type, Callable[..., nn.Module]]] = {
    "theory": (TheoryConfig, build_theory_model),
    "wrn": (WRNConfig, WideResNet),
    "vit": (ViTConfig, ViT),
    "e3": (E3Config, E3ViT),
}


def build_model(arch: str, config: dict) -> nn.Module:
    """Rebuild a model from its architecture name and config dict (as saved in config.json)."""
    check(arch in ARCHS, f"unknown architecture {arch!r}; expected one of {sorted(ARCHS)}")
    cls, builder = ARCHS[arch]
    return builder(typed(cls, config, f"config of a {arch!r} model"))


__all__ = ["ARCHS", "build_model", "THEORY_MODELS", "TheoryConfig", "TwoLayerCNN", "MixtureOfCNNs",
           "build_theory_model", "theory_config"]
