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

`gate_activations=True` (wrn-pmoe-tiny) moves the gate past the normalisation, as in the paper's model
f_M = sum_s sum_r a_{r,s}/l sum_{j in J_s} G_{j,s} ReLU(<w_{r,s}, x_j>): the experts' outputs, ungated, go through the
concat BN -> ReLU, and the head reads sum_{j in J_s} G_{j,s} (mean over region j of expert s's activations), the gates
normalised to sum 1 over the l regions (`softmax_selected`; `hard`: 1/l each). The pooled features are then linear in
the gates. In the authors' layout a BN follows the gate directly and divides out its scale, so the routers learn only
through the batch statistics; in the tiny model that signal drives all routers onto the same non-discriminative
regions (REPRODUCTION §4, "A user's first run").
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers import GATE_MODES, ConvExperts, PatchMoE
from pmoe.models.base import CellGrid, MoEModel
from pmoe.models.images import check_sizes, fit_images, padding, patchify, unpatchify

STRIDE = 4  # input pixels per cell of the last map (two stride-2 stages)


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
    gate_activations: bool = False  # gate the experts' BN -> ReLU activations, not their conv outputs (module doc)

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
        check(not (cfg.gate_activations and cfg.gate == "softmax_all"),
              "gate_activations weighs each expert's regions by gates normalised over them (softmax_all renormalised "
              "is softmax_selected): use gate=softmax_selected or hard, or gate_activations=false for the authors' "
              "layout with softmax_all")


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


class WideResNet(MoEModel):
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

    def forward(self, images: Tensor) -> Tensor:
        cfg = self.config
        x = self.features(fit_images(images, cfg.in_channels, cfg.image_size, cfg.input_size))  # (B, C, S, S)
        if self.moe is not None and cfg.gate_activations:
            return self.head(self._gated_activations(x))  # (B, k*O) -> (B, num_classes)
        if self.moe is not None:
            rows = x.shape[2] // cfg.region
            out = self.moe(patchify(x, cfg.region)).output  # (B, n, k*O*p*p): expert s fills channel block s
            x = unpatchify(out, cfg.region, rows)  # (B, k*O, S, S)
        return self.head(F.relu(self.norm(x)).mean(dim=(2, 3)))  # (B, width) -> (B, num_classes)

    def _gated_activations(self, x: Tensor) -> Tensor:
        """Last map (B, C, S, S) -> (B, K*O) pooled features: block s = sum over the regions j expert s took of
        G_{j,s} / sum_j G_{j,s} x (mean over region j of ReLU(BN(expert s's conv output))).

        The routed layer runs its experts ungated (gates 1); its `last_routing` is set to the routing with the gates
        applied here. A zero-mode-pruned expert's block is ReLU(BN(0)), as in the authors' layout."""
        p, moe = self.config.region, self.moe
        regions = patchify(x, p)  # (B, n, C*p*p)
        r = moe.route(regions)  # index, gates (B, K, l)
        out = moe(regions, replace(r, gates=torch.ones_like(r.gates))).output  # (B, n, K*O*p*p), ungated
        moe.last_routing = r
        act = patchify(F.relu(self.norm(unpatchify(out, p, x.shape[2] // p))), p)  # (B, n, K*O*p*p)
        B, n, K = *regions.shape[:2], moe.num_experts
        weights = r.gates / r.gates.sum(-1, keepdim=True)  # (B, K, l)
        gate = weights.new_zeros(B, K, n).scatter_(2, r.index, weights).transpose(1, 2)  # (B, n, K): 0 if not taken
        act = act.view(B, n, K, -1) * gate.unsqueeze(-1).to(act.dtype)  # (B, n, K, O*p*p)
        return act.sum(1).view(B, K, -1, p * p).mean(-1).reshape(B, -1)

    def concat_head(self) -> tuple[nn.BatchNorm2d, nn.Linear]:
        return self.norm, self.head

    def cell_grid(self, images: Tensor) -> CellGrid:
        """Regions of p x p cells of the last map, STRIDE px per map cell: 4p px (receptive fields reach further)."""
        c = self.config
        rows = c.map_size // c.region
        return CellGrid(rows, rows, STRIDE * c.region, -padding(c.image_size, images.shape[-1]))
