"""Model families, each built from a dataclass config that is saved beside its weights; every model is a
`MoEModel` (`base`: the contract training, pruning and analysis use).

`ARCHS` maps an architecture name (stored in a checkpoint's config.json) to its config class and builder;
`build_preset(name, **overrides)` builds a named vision model (`presets`), `build_theory_model(theory_config(...))`
a theory model.
"""
from pmoe.models.archs import ARCHS, build_model
from pmoe.models.base import CellGrid, MoEModel
from pmoe.models.e3moe import E3Config, E3ViT
from pmoe.models.presets import PRESETS, build_preset, preset
from pmoe.models.theory import (THEORY_MODELS, MixtureOfCNNs, TheoryConfig, TwoLayerCNN, build_theory_model,
                                theory_config)
from pmoe.models.vit import ViT, ViTConfig
from pmoe.models.wrn import WideResNet, WRNConfig

__all__ = ["ARCHS", "CellGrid", "E3Config", "E3ViT", "MixtureOfCNNs", "MoEModel", "PRESETS", "THEORY_MODELS",
           "TheoryConfig", "TwoLayerCNN", "ViT", "ViTConfig", "WRNConfig", "WideResNet", "build_model",
           "build_preset", "build_theory_model", "preset", "theory_config"]
