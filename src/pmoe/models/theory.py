"""The two-layer models of the pMoE theory (Chowdhury et al., ICML 2023), with the paper's initialisations.

* `TwoLayerCNN`:  f_C(x) = sum_r (a_r / n) sum_{j=1..n} ReLU(<w_r, x_j>)
* `MixtureOfCNNs`: f_M(x) = sum_s sum_r (a_{r,s} / l) sum_{j in J_s(x)} G_{j,s}(x) ReLU(<w_{r,s}, x_j>)
  trained jointly (`pmoe`) or with routers trained first and frozen, hard gates (`pmoe-separate`).
Output weights a are fixed; hidden neurons and routers train. All models map (B, n, d) -> (B,) logits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from pmoe.errors import check
from pmoe.fields import typed
from pmoe.layers import GATE_MODES, PatchMoE, relu_neurons
from pmoe.models.base import CellGrid, MoEModel
from pmoe.models.images import patchify

THEORY_MODELS = ("cnn", "pmoe", "pmoe-separate")


@dataclass
class TheoryConfig:
    """Architecture and initialisation of a theory model. `theory_config` fills in the paper's defaults."""

    model: str = "pmoe"  # cnn | pmoe (joint training) | pmoe-separate (routers trained first, hard gates)
    n: int = 16  # patches per sample
    d: int = 784  # patch dimension
    experts: int = 8  # k (1 for the CNN)
    neurons: int = 5  # m, hidden ReLU neurons per expert (filters of the CNN)
    l: int = 6  # patches per expert per sample (n for the CNN)
    gate: str = "softmax_selected"  # gate mode; `hard` for pmoe-separate
    expert_std: float = 0.01  # init std of hidden neurons
    router_std: float = 1e-4  # init std of routers
    output: str = "normal"  # output weights: `normal` N(0, 1), or `signed` (+1 for expert 1, -1 for expert 2)
    pool: str = "l"  # divide expert sums by `l` (paper's formula) or by `n` (official code's global avg-pool)
    seed: int = 0  # seed of the initialisation
    extra: dict = field(default_factory=dict)  # free-form notes carried into the saved config

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's MNIST settings (official code): CNN 4 filters N(0, .1^2); joint pMoE 8 experts x 5 filters, l=6,
# routers N(0, 1e-4^2), experts N(0, .01^2); separate pMoE 2 experts x 20 filters N(0, .1^2), l=2, outputs +1 / -1,
# routers N(0, .1^2). Joint pMoE follows the formula's 1/l. The code pools separate pMoE with a global average over
# all n positions (1/n), and at lr 0.2 with 1/l its ReLUs die (measured on Fashion-MNIST canvases: 24% vs 89%).
PAPER_DEFAULTS: dict[str, dict] = {
    "cnn": dict(experts=1, neurons=4, expert_std=0.1, router_std=0.0),
    "pmoe": dict(experts=8, neurons=5, l=6, gate="softmax_selected", expert_std=0.01, router_std=1e-4),
    "pmoe-separate": dict(experts=2, neurons=20, l=2, gate="hard", expert_std=0.1, router_std=0.1,
                          output="signed", pool="n"),
}


def theory_config(model: str, n: int, d: int, **overrides) -> TheoryConfig:
    """The paper's configuration of `model` for n patches of dimension d, with `overrides` applied."""
    check(model in THEORY_MODELS, f"unknown model {model!r}; expected one of {THEORY_MODELS}")
    fields = {**PAPER_DEFAULTS[model], **{k: v for k, v in overrides.items() if v is not None}}
    cfg = typed(TheoryConfig, {"model": model, "n": n, "d": d, **fields}, f"config of model {model!r}")
    if model == "cnn":
        cfg.l = n
    validate(cfg)
    return cfg


def validate(cfg: TheoryConfig) -> None:
    check(cfg.model in THEORY_MODELS, f"unknown model {cfg.model!r}; expected one of {THEORY_MODELS}")
    check(cfg.n >= 1 and cfg.d >= 1, f"n and d must be >= 1, got n={cfg.n}, d={cfg.d}")
    check(1 <= cfg.l <= cfg.n, f"l (patches per expert) must be in 1..n={cfg.n}, got l={cfg.l}")
    check(cfg.experts >= 1 and cfg.neurons >= 1, f"experts and neurons must be >= 1, got {cfg.experts}, {cfg.neurons}")
    check(cfg.gate in GATE_MODES, f"gate must be one of {GATE_MODES}, got {cfg.gate!r}")
    check(cfg.output in ("normal", "signed"), f"output must be 'normal' or 'signed', got {cfg.output!r}")
    check(cfg.output != "signed" or cfg.experts == 2, f"signed output weights need 2 experts, got {cfg.experts}")
    check(cfg.pool in ("l", "n"), f"pool must be 'l' or 'n', got {cfg.pool!r}")


def _output_weights(cfg: TheoryConfig, generator: torch.Generator) -> Tensor:
    """(k, m) fixed output weights a_{r,s}."""
    if cfg.output == "signed":
        return torch.tensor([1.0, -1.0]).view(2, 1).expand(2, cfg.neurons).clone()
    return torch.randn(cfg.experts, cfg.neurons, generator=generator)


class TwoLayerCNN(MoEModel):
    """f_C(x) = sum_r (a_r / n) sum_j ReLU(<w_r, x_j>): one filter bank shared by all n patches.

    `w` has the shape (d, m) of the saved checkpoints, but its memory holds the m filters as rows (an (m, d) matrix
    seen transposed): the forward GEMM then has the m filters as its rows and the weight gradient comes out (m, d),
    the two orientations that are fast for m = 4 on CPU (each GEMM 3-4x faster than with a row-major (d, m) weight).
    Loading a state dict copies into that memory, so checkpoints of either layout load into it.
    """

    routers_first = False  # no routers: one training stage (see MixtureOfCNNs.routers_first)

    def __init__(self, cfg: TheoryConfig) -> None:
        super().__init__()
        validate(cfg)
        self.config = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        w = torch.randn(cfg.d, cfg.neurons, generator=g) * cfg.expert_std  # (d, m)
        self.w = nn.Parameter(w.t().contiguous().t())  # (d, m) view of (m, d) memory
        self.register_buffer("a", _output_weights(TheoryConfig(experts=1, neurons=cfg.neurons), g)[0])  # (m,)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, n, d) -> (B,) logits."""
        check(x.dim() == 3 and x.shape[-1] == self.config.d,
              f"input must be (B, n, d={self.config.d}), got shape {tuple(x.shape)}")
        B, n, d = x.shape
        hidden = torch.relu(self.w.t() @ x.reshape(B * n, d).t())  # (m, B*n)
        return self.a @ hidden.view(-1, B, n).mean(dim=2)  # (m, B) -> (B,)


class MixtureOfCNNs(MoEModel):
    """f_M(x): k experts of m ReLU neurons, each on the l patches of x its router picks."""

    def __init__(self, cfg: TheoryConfig) -> None:
        super().__init__()
        validate(cfg)
        self.config = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        scale = cfg.l if cfg.pool == "l" else cfg.n
        a = _output_weights(cfg, g) / scale  # (k, m)
        experts = relu_neurons(cfg.experts, cfg.d, cfg.neurons, a)
        experts.w1.data = torch.randn(cfg.experts, cfg.neurons, cfg.d, generator=g) * cfg.expert_std  # (k, m, d)
        # Tiny experts (see PatchMoE): when the experts take more rows than there are patches (k*l >= n), all of
        # them on every patch as one GEMM is faster; else (pmoe-separate's 2 x 2 of 16) gathering their rows is.
        dispatch = "dense" if cfg.experts * cfg.l >= cfg.n else "gather"
        self.moe = PatchMoE(experts, cfg.l, gate=cfg.gate, dispatch=dispatch)
        self.moe.router.weight.data = torch.randn(cfg.experts, cfg.d, generator=g) * cfg.router_std

    @property
    def router(self) -> nn.Linear:
        return self.moe.router

    @property
    def routers_first(self) -> bool:
        """Separate training (`pmoe-separate`): the routers train first, as the linear model `router_logit`."""
        return self.config.model == "pmoe-separate"

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, n, d) -> (B,) logits."""
        return self.moe(x).output.sum(dim=(1, 2))  # (B, n, 1) -> (B,)

    def router_logit(self, x: Tensor) -> Tensor:
        """Linear model of separate training's first stage: sum_j <w_1 - w_2, x_j>.  x: (B, n, d) -> (B,)."""
        w = self.router.weight  # (2, d)
        return x.sum(dim=1) @ (w[0] - w[1])

    def cell_grid(self, images: Tensor) -> CellGrid:
        """Canvases (B, 1, H, W) of n square patches of side sqrt(d): a cell is a patch."""
        cfg = self.config
        p, (H, W) = math.isqrt(cfg.d), images.shape[-2:] if images.dim() == 4 else (0, 0)
        check(images.dim() == 4 and images.shape[1] == 1 and p * p == cfg.d and H % p == 0 and W % p == 0
              and (H // p) * (W // p) == cfg.n, f"a theory model of n={cfg.n} patches of d={cfg.d} takes canvases "
              f"(B, 1, H, W) of n square patches, got shape {tuple(images.shape)}")
        return CellGrid(H // p, W // p, p, 0)

    def image_inputs(self, images: Tensor) -> Tensor:
        """Canvases (B, 1, H, W) -> their n patches (B, n, d), row-major."""
        return patchify(images, math.isqrt(self.config.d))


def build_theory_model(cfg: TheoryConfig) -> MoEModel:
    """The model a `TheoryConfig` describes (each constructor validates it)."""
    return TwoLayerCNN(cfg) if cfg.model == "cnn" else MixtureOfCNNs(cfg)
