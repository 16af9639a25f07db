"""Named models: `preset(name, **overrides)` -> (arch, config); `build_preset` -> the model. The vision presets
(`PRESETS`) below, and the theory models (`THEORY_MODELS`: cnn, pmoe, pmoe-separate with the paper's settings,
`pmoe.models.theory`), built for data of n patches of dimension d (`build_preset("pmoe", n=16, d=784, seed=0)`).

WRN and WRN-pMoE, as the pMoE authors' code (WRN-10-10: 160/320/640 channels):
  wrn-cifar, wrn-pmoe-cifar    32x32, 10 classes; pMoE: 4 experts of 1x1 conv, 160 filters, n=64 (8x8 map), l=16
  wrn-celeba, wrn-pmoe-celeba  64x64, 4 classes (smiling x eyeglasses); pMoE: 8 experts of 3x3 conv, 80 filters,
                               n=16 regions of 4x4 of the 16x16 map, l=2
  wrn-tiny, wrn-pmoe-tiny      tests: widen 1 (16/32/64), 32x32; pMoE: 4 experts of 3x3 conv, 16 filters, n=16 regions
                               of 2x2, l=4 (k x filters = 64, the dense last width, as in the paper's presets); the
                               paper's gate (softmax over the l chosen scores) on the experts' normalised activations
                               (`gate_activations`: with the authors' gate before the BN its routers all take the same
                               non-discriminative regions and it learns half as well as wrn-tiny in a first run)
ViT (timm sizes) and ViT-MoE (V-MoE layout: MoE in blocks 1, 3, 5, ...; token router):
  vit-tiny, vit-moe-tiny       tests: 32x32, patch 4, dim 64, depth 4, 4 heads, mlp 128; MoE: 4 experts, K=2
  vit-s, vit-moe-s             224x224, patch 16, dim 384, depth 12, 6 heads, mlp 1536; MoE: 8 experts, K=2
  vit-b, vit-moe-b             224x224, patch 16, dim 768, depth 12, 12 heads, mlp 3072; MoE: V-MoE-B/16, 8 experts, K=2
E³ (ensemble of experts, token router):
  e3-tiny                      vit-moe-tiny's sizes, 4 experts in M=2 members, K=1
  e3-s32                       E³-S/32 (vmoe `eee_s32_last2`): 224x224, patch 32, dim 512, depth 8, 8 heads, mlp 2048,
                               8 experts in blocks 5 and 7, M=2, K=1

Any config field can be overridden: in_channels, num_classes, image_size, patch_size, router ('token' | 'patch'), ...
Other input sizes, e.g. Fashion-MNIST (1x28x28): `preset("wrn-pmoe-cifar", in_channels=1, input_size=28)` zero-pads
the images to 32x32 (same n=64); `image_size=28` builds for 28x28 instead (7x7 map, n=49). `vit-tiny` takes
`image_size=28` directly (patch 4 divides 28); the 224 presets need `image_size` a multiple of their patch size.
"""
from __future__ import annotations

from functools import partial

from pmoe.errors import check
from pmoe.fields import check_fields
from pmoe.models.archs import ARCHS
from pmoe.models.base import MoEModel
from pmoe.models.e3moe import E3Config
from pmoe.models.theory import THEORY_MODELS, TheoryConfig, theory_config
from pmoe.models.vit import ViTConfig, every_other
from pmoe.models.wrn import WRNConfig

VisionConfig = WRNConfig | ViTConfig

_WRN_CIFAR = dict(num_classes=10, image_size=32)
_WRN_CELEBA = dict(num_classes=4, image_size=64)
_WRN_TINY = dict(num_classes=10, image_size=32, widen=1)
_VIT_TINY = dict(num_classes=10, image_size=32, patch_size=4, dim=64, depth=4, heads=4, mlp_dim=128)
_VIT_S = dict(dim=384, depth=12, heads=6, mlp_dim=1536)
_MOE_TINY = dict(moe_blocks=(1, 3), experts=4)
_VMOE = dict(moe_blocks=every_other(12), experts=8, num_selected=2)

PRESETS: dict[str, partial] = {
    "wrn-cifar": partial(WRNConfig, **_WRN_CIFAR),
    "wrn-pmoe-cifar": partial(WRNConfig, **_WRN_CIFAR, experts=4, expert_channels=160, expert_kernel=1, region=1, l=16),
    "wrn-celeba": partial(WRNConfig, **_WRN_CELEBA),
    "wrn-pmoe-celeba": partial(WRNConfig, **_WRN_CELEBA, experts=8, expert_channels=80, expert_kernel=3, region=4, l=2),
    "wrn-tiny": partial(WRNConfig, **_WRN_TINY),
    "wrn-pmoe-tiny": partial(WRNConfig, **_WRN_TINY, experts=4, expert_channels=16, expert_kernel=3, region=2, l=4,
                             gate="softmax_selected", gate_activations=True),
    "vit-tiny": partial(ViTConfig, **_VIT_TINY),
    "vit-moe-tiny": partial(ViTConfig, **_VIT_TINY, **_MOE_TINY),
    "vit-s": partial(ViTConfig, **_VIT_S),
    "vit-moe-s": partial(ViTConfig, **_VIT_S, **_VMOE),
    "vit-b": partial(ViTConfig),
    "vit-moe-b": partial(ViTConfig, **_VMOE),
    "e3-tiny": partial(E3Config, **_VIT_TINY, **_MOE_TINY, num_selected=1, ensemble_size=2),
    "e3-s32": partial(E3Config),
}


def preset(name: str, **overrides) -> tuple[str, VisionConfig | TheoryConfig]:
    """(arch, config) of model `name` with `overrides` applied; save `dataclasses.asdict(config)` in checkpoints.

    `name`: a vision preset (`PRESETS`) or a theory model (`THEORY_MODELS`: the paper's settings, built for data of n
    patches of dimension d, which `overrides` must give: `preset("pmoe", n=16, d=784, seed=0)`)."""
    if name in THEORY_MODELS:
        check({"n", "d"} <= set(overrides), f"theory model {name!r} is built for data: give n and d (patches per "
                                            f"sample and their dimension), got {sorted(overrides)}")
        return "theory", theory_config(name, **overrides)
    check(name in PRESETS, f"unknown preset {name!r}; expected one of {sorted(PRESETS)} or {list(THEORY_MODELS)}")
    factory = PRESETS[name]
    check_fields(factory.func, overrides, f"preset {name!r}")
    cfg = factory(**overrides)
    return next(arch for arch, (cls, _) in ARCHS.items() if type(cfg) is cls), cfg


def build_preset(name: str, **overrides) -> MoEModel:
    """The model of preset or theory model `name` with `overrides` applied (see `preset`)."""
    arch, cfg = preset(name, **overrides)
    return ARCHS[arch][1](cfg)
