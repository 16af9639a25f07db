"""Vision Transformer (timm-like, pre-norm) and ViT-MoE in the V-MoE layout (Riquelme et al., 2021).

Patch-embedding conv -> [cls] + patch tokens + learned position embedding -> `depth` blocks
x + Attn(LN(x)), x + FFN(LN(x)) -> LN -> linear head on the cls token. The FFN of the blocks in `moe_blocks` (V-MoE:
every other block, 1, 3, 5, ...) is `MoEMlp`: k experts of the full MLP width with a `token` router (top-K, capacity,
batch-prioritized routing, noise 1/k while training, importance and load losses 0.005 each) or a `patch` router
(pMoE per-image expert choice, l = ceil(n*K/k) tokens per expert).

The MoE contract of the models (`moe_layers`, `aux_loss`, ...) is `pmoe.models.base.MoEModel`.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.layers import GATE_MODES, MoEMlp
from pmoe.models.base import CellGrid, MoEModel
from pmoe.models.images import check_sizes, fit_images, padding


@dataclass
class ViTConfig:
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224  # side of the square images the model is built for
    input_size: int | None = None  # side of the images fed in if smaller (zero-padded centrally); None = image_size
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    moe_blocks: tuple[int, ...] = ()  # blocks whose FFN is an MoE (V-MoE: 1, 3, 5, ...); () = plain ViT
    experts: int = 8  # k, experts per MoE layer
    num_selected: int = 2  # K: experts per token (token router), on average per token (patch router)
    router: str = "token"  # token: V-MoE top-K with capacity | patch: pMoE per-image expert choice
    gate: str = "softmax_selected"  # gate of the patch router
    capacity_factor: float = 1.05  # token router, training
    eval_capacity_factor: float = 1.5  # token router, evaluation
    group_images: int = 1  # token router: images per routing group, capacity and balance per group (vmoe: 8)
    dropout: float = 0.0  # after the attention projection and inside the FFNs

    def __post_init__(self) -> None:
        self.moe_blocks = tuple(self.moe_blocks)  # a JSON config gives a list

    @property
    def tokens(self) -> int:
        """n, tokens per image: patches + cls."""
        return (self.image_size // self.patch_size) ** 2 + 1


def validate(cfg: ViTConfig) -> None:
    small = [f"{f}={getattr(cfg, f)}" for f in ("num_classes", "in_channels", "patch_size", "dim", "depth", "heads",
                                                 "mlp_dim", "experts", "group_images") if getattr(cfg, f) < 1]
    check(not small, f"{', '.join(small)}: must be >= 1")
    check_sizes(cfg.image_size, cfg.input_size)
    check(cfg.image_size % cfg.patch_size == 0,
          f"patch_size={cfg.patch_size} must divide image_size={cfg.image_size}")
    check(cfg.dim % cfg.heads == 0, f"heads={cfg.heads} must divide dim={cfg.dim}")
    check(all(0 <= i < cfg.depth for i in cfg.moe_blocks) and len(set(cfg.moe_blocks)) == len(cfg.moe_blocks),
          f"moe_blocks must be distinct block indices in 0..{cfg.depth - 1}, got {list(cfg.moe_blocks)}")
    check(cfg.router in ("token", "patch"), f"router must be 'token' or 'patch', got {cfg.router!r}")
    check(1 <= cfg.num_selected <= cfg.experts,
          f"num_selected must be in 1..experts={cfg.experts}, got {cfg.num_selected}")
    check(cfg.gate in GATE_MODES, f"gate must be one of {GATE_MODES}, got {cfg.gate!r}")
    check(0 <= cfg.dropout < 1, f"dropout must be in [0, 1), got {cfg.dropout}")
    check(0 < cfg.capacity_factor < math.inf and 0 < cfg.eval_capacity_factor < math.inf,
          f"capacity_factor and eval_capacity_factor must be > 0 and finite, got {cfg.capacity_factor}, "
          f"{cfg.eval_capacity_factor}")


def every_other(depth: int) -> tuple[int, ...]:
    """V-MoE "Every 2": blocks 1, 3, 5, ..."""
    return tuple(range(1, depth, 2))


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> act -> drop -> fc2 -> drop (same signature as `MoEMlp`)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: type[nn.Module] | None = None, bias: bool = True,
                 drop: float = 0.0) -> None:
        super().__init__()
        check(norm_layer is None, "Mlp has no inner norm layer; pass norm_layer=None")
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, drop: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        B, n, d = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, n, d/h) each
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n, d)  # (B, n, d)
        return self.drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block; the FFN is `mlp_layer(dim, mlp_dim, act_layer=GELU, drop=drop)`."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, mlp_layer: Callable[..., nn.Module] = Mlp,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp_layer(dim, mlp_dim, act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(MoEModel):
    """ViT / ViT-MoE.  images (B, C, s, s) -> logits (B, num_classes)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        validate(cfg)
        self.config = cfg
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
        moe = self.moe_mlp()
        self.blocks = nn.Sequential(*(Block(cfg.dim, cfg.heads, cfg.mlp_dim, moe if i in cfg.moe_blocks else Mlp,
                                            cfg.dropout) for i in range(cfg.depth)))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.apply(_init_linear)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def moe_mlp(self) -> Callable[..., nn.Module]:
        """The FFN class of the MoE blocks, configured."""
        c = self.config
        return partial(MoEMlp, num_experts=c.experts, router=c.router, num_selected=c.num_selected, gate=c.gate,
                       capacity_factor=c.capacity_factor, eval_capacity_factor=c.eval_capacity_factor,
                       ensemble_size=self.ensemble_size, group_images=c.group_images)

    def embed(self, images: Tensor) -> Tensor:
        """images (B, C, s, s) -> tokens (B, n, d), cls first."""
        c = self.config
        x = self.patch_embed(fit_images(images, c.in_channels, c.image_size, c.input_size))  # (B, d, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, d)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (B, n, d)

    def forward_features(self, images: Tensor) -> Tensor:
        """images -> (B, d) normalised cls token."""
        return self.norm(self.blocks(self.embed(images)))[:, 0]

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.forward_features(images))  # (B, num_classes)

    def moe_ffns(self) -> list[MoEMlp]:
        """The MoE FFNs of the blocks, in depth order."""
        return [blk.mlp for blk in self.blocks if isinstance(blk.mlp, MoEMlp)]

    def cell_grid(self, images: Tensor) -> CellGrid:
        """ViT patches of patch_size px; the cls token (first) has no cell."""
        c = self.config
        g = c.image_size // c.patch_size
        return CellGrid(g, g, c.patch_size, -padding(c.image_size, images.shape[-1]), skip=1)


def _init_linear(m: nn.Module) -> None:
    """timm's ViT init: linear weights truncated-normal with std 0.02, biases 0 (routers included)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
