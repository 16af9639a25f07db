"""WideResNet and WRN-pMoE, as in the pMoE authors' TensorFlow `wideresnet.py` / `wideresnet_moe.py`.

WRN-depth-widen (pre-activation): Conv3x3(16) -> 3 groups of (depth-4)/6 blocks with 16w, 32w, 64w channels
(strides 1, 2, 2) -> BN -> ReLU -> global avg-pool -> dense. A block is BN-ReLU-Conv3x3(stride)-BN-ReLU-Conv3x3 plus
its input, taken through a 1x1 conv (stride) in the first block of every group. Every conv has a bias (Keras default).
The authors run WRN-10-10: one block per group, 160/320/640 channels.

WRN-pMoE replaces the last group by BN -> ReLU -> Conv3x3(64w, stride 2) -> k routers over the n regions (p x p) of
that map -> expert s: BN -> ReLU -> Conv on its l regions -> concat of the k experts' channels -> BN -> ReLU ->
avg-pool -> dense. Routers: a linear score per region (the authors' p x p, stride p gating conv), init N(0, 1e-4^2),
softmax over the n scores with the top l kept (`softmax_all`).
Where we differ from the authors' code, on purpose (DESIGN §1): there every expert runs densely over the whole map,
its *input* multiplied by the gate mask; here expert s runs on its l regions only (each zero-padded at its border for
3x3 kernels), its *output* multiplied by the gate (`PatchMoE`), and regions it did not pick stay 0.

MoE protocol (pruning): `moe_layers()` lists the routed layers; each has `.router.weight` [k, d] (row s = expert s).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers import ConvExperts, PatchMoE
from pmoe.models.images import check_sizes, fit_images
from pmoe.routing import GATE_MODES, PatchRouting


@dataclass
class WRNConfig:
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32  # side of the square images the model is built for
    input_size: int | None = None  # side of the images fed in if smaller (zero-padded centrally); None = image_size
    depth: int = 10  # 6 * blocks per group + 4
    widen: int = 10  # group widths 16w, 32w, 64w
    experts: int = 0  # k; 0 = plain WRN, > 0 = WRN-pMoE
    expert_channels: int = 160  # filters of every expert
    expert_kernel: int = 1  # kernel side of the expert convs (odd)
    region: int = 1  # p: side of a region of the last map; n = (map side / p)^2
    l: int = 16  # regions per expert per sample
    gate: str = "softmax_all"  # the authors' gate: softmax over all n scores, top l kept unnormalised
    router_std: float = 1e-4  # the authors' router init N(0, 1e-4^2)

    @property
    def map_size(self) -> int:
        """Side of the last map (three stride-2 stages after the first: ceil(image_size / 4))."""
        return -(-self.image_size // 4)

    @property
    def regions(self) -> int:
        """n, regions of the last map."""
        return (self.map_size // self.region) ** 2


def validate(cfg: WRNConfig) -> None:
    check(cfg.depth >= 10 and (cfg.depth - 4) % 6 == 0, f"depth must be 6*b + 4 with b >= 1, got {cfg.depth}")
    check(cfg.widen >= 1 and cfg.in_channels >= 1 and cfg.num_classes >= 1,
          f"widen, in_channels, num_classes must be >= 1, got {cfg.widen}, {cfg.in_channels}, {cfg.num_classes}")
    check_sizes(cfg.image_size, cfg.input_size)
    check(cfg.experts >= 0, f"experts must be >= 0 (0 = plain WRN), got {cfg.experts}")
    if cfg.experts:
        check(cfg.expert_channels >= 1 and cfg.expert_kernel >= 1 and cfg.expert_kernel % 2 == 1,
              f"expert_channels must be >= 1 and expert_kernel odd, got {cfg.expert_channels}, {cfg.expert_kernel}")
        check(cfg.region >= 1 and cfg.map_size % cfg.region == 0,
              f"region={cfg.region} must divide the {cfg.map_size}x{cfg.map_size} last map of a {cfg.image_size}px "
              f"image; pick another region, or a larger image_size with input_size for zero-padding")
        check(1 <= cfg.l <= cfg.regions, f"l (regions per expert) must be in 1..n={cfg.regions}, got {cfg.l}")
        check(cfg.gate in GATE_MODES, f"gate must be one of {GATE_MODES}, got {cfg.gate!r}")


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, n, C*p*p): the n non-overlapping p x p regions, row-major, each flattened channel-first."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(x: Tensor, p: int, rows: int) -> Tensor:
    """(B, n, C*p*p) -> (B, C, rows*p, (n/rows)*p): the inverse of `patchify`."""
    B, n, D = x.shape
    x = x.reshape(B, rows, n // rows, D // (p * p), p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, rows, p, cols, p)
    return x.reshape(B, D // (p * p), rows * p, (n // rows) * p)


def preact_conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """BN -> ReLU -> Conv (same padding, bias)."""
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, stride, kernel // 2))


class Block(nn.Module):
    """Pre-activation residual block; `project`: the shortcut is a 1x1 conv (first block of a group)."""

    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(preact_conv(cin, cout, 3, stride), preact_conv(cout, cout))
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.body(x)


def group(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` blocks; the first changes width and stride, through a projected shortcut."""
    return nn.Sequential(*(Block(cout if i else cin, cout, 1 if i else stride, project=i == 0) for i in range(blocks)))


class WideResNet(nn.Module):
    """WRN (`experts == 0`) or WRN-pMoE.  images (B, C, s, s) -> logits (B, num_classes)."""

    def __init__(self, cfg: WRNConfig) -> None:
        super().__init__()
        validate(cfg)
        self.config = cfg
        w, blocks = [16 * cfg.widen, 32 * cfg.widen, 64 * cfg.widen], (cfg.depth - 4) // 6
        stem = [nn.Conv2d(cfg.in_channels, 16, 3, 1, 1), group(16, w[0], blocks, 1), group(w[0], w[1], blocks, 2)]
        self.moe: PatchMoE | None = None
        if cfg.experts:
            self.features = nn.Sequential(*stem, preact_conv(w[1], w[2], 3, 2))
            p = cfg.region
            experts = ConvExperts(cfg.experts, w[2], cfg.expert_channels, (p, p), cfg.expert_kernel, bias=True,
                                  preact=True)
            self.moe = PatchMoE(experts, cfg.l, cfg.gate, combine="concat", router_std=cfg.router_std)
            width = cfg.experts * cfg.expert_channels
        else:
            self.features = nn.Sequential(*stem, group(w[1], w[2], blocks, 2))
            width = w[2]
        self.norm = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, cfg.num_classes)
        self.last_routing: PatchRouting | None = None

    def forward(self, images: Tensor) -> Tensor:
        cfg = self.config
        x = self.features(fit_images(images, cfg.in_channels, cfg.image_size, cfg.input_size))  # (B, C, S, S)
        if self.moe is not None:
            rows = x.shape[2] // cfg.region
            out = self.moe(patchify(x, cfg.region))  # (B, n, k*O*p*p): expert s fills channel block s
            self.last_routing = out.routing
            x = unpatchify(out.output, cfg.region, rows)  # (B, k*O, S, S)
        return self.head(F.relu(self.norm(x)).mean(dim=(2, 3)))  # (B, width) -> (B, num_classes)

    def moe_layers(self) -> list[PatchMoE]:
        return [] if self.moe is None else [self.moe]

    def aux_loss(self) -> Tensor:
        """Patch routing has no auxiliary loss: 0 (for a uniform training loop)."""
        return self.head.weight.new_zeros(())
