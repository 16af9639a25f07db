"""`PatchMoE(dispatch="fused")` against the gather path in float64: each case's largest error of the output and of
every gradient, relative to the reference's largest magnitude; the CUDA tile sizes on larger cases; calibration;
refusals and an empty batch. Run by tests/test_fused.py: in a subprocess with
TRITON_INTERPRET=1 on CPU (the kernels interpreted, fp32), in-process on CUDA (fp32 and bf16).

    TRITON_INTERPRET=1 PYTHONPATH=src python tests/fused_cases.py   # prints the errors as JSON
"""
from __future__ import annotations

import json

import torch
from torch import nn

from pmoe.errors import PmoeError
from pmoe.layers import MlpExperts, PatchMoE
from pmoe.layers import fused as fused_module
from pmoe.layers.fused import runs_fused
from pmoe.prune.surgery import prune_layer
from pmoe.prune.usage import layer_usage, saliency

# name: (B, n, d, h, k, layer options, bank options, kept experts or None)
CASES = {
    "gelu, bias, one tile": (3, 10, 12, 20, 4, dict(l=3), dict(), None),
    "relu, no bias": (3, 10, 12, 20, 4, dict(l=3), dict(act_layer=nn.ReLU, bias=False), None),
    "several tiles, K=2": (6, 20, 40, 36, 4, dict(num_selected=2), dict(), None),
    "frozen output layer": (3, 10, 12, 20, 4, dict(l=3), dict(train_output=False), None),
    "pruned to 3 of 5": (4, 9, 12, 20, 5, dict(l=4), dict(), [0, 2, 3]),
    "sizes that fill the tiles": (4, 16, 32, 48, 2, dict(l=8), dict(), None),  # M, d, h multiples of 16 and 32
}
LARGE_CASES = {  # several of the CUDA tiles (CUDA_GEMM_TILES), ragged and filled
    "CUDA tiles, ragged": (9, 40, 140, 200, 2, dict(l=30), dict(), None),  # M = 270
    "CUDA tiles, filled": (4, 64, 256, 256, 2, dict(l=64), dict(), None),  # M, d, h = 256: every tile whole
}


def build(case: tuple, dispatch: str, seed: int = 0) -> PatchMoE:
    B, n, d, h, k, layer_opts, bank_opts, kept = case
    torch.manual_seed(seed)
    layer = PatchMoE(MlpExperts(k, d, h, init_std=0.3, **bank_opts), dispatch=dispatch, router_std=0.5,
                     **layer_opts)
    for b in (layer.experts.b1, layer.experts.b2):
        if b is not None:
            nn.init.normal_(b)
    if kept is not None:
        prune_layer(layer, kept, "zero")
    return layer


def outputs(layer: PatchMoE, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of a weighted sum of it, and the gradients of x and of every trained parameter."""
    x = x.detach().requires_grad_()
    y = layer(x).output
    (y.double() * torch.linspace(-1, 1, y.numel(), dtype=torch.float64, device=y.device).view_as(y)).sum().backward()
    return [y, x.grad] + [p.grad for p in layer.parameters() if p.requires_grad]


class OneLayer(nn.Module):
    """A model of one routed layer (`moe_layers()`), for the code that walks a model's layers."""

    def __init__(self, layer: PatchMoE) -> None:
        super().__init__()
        self.moe = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x).output

    def moe_layers(self) -> list[PatchMoE]:
        return [self.moe]


def saliency_error(device: str, dtype: torch.dtype) -> float:
    """Largest difference of the saliency scores (which read the bank's outputs) of a fused and a gathering layer."""
    case = CASES["gelu, bias, one tile"]
    calib = [torch.randn(case[0], case[1], case[2], generator=torch.Generator().manual_seed(2), dtype=dtype)]
    scores = [saliency(layer_usage(OneLayer(build(case, d)).to(device, dtype), calib)[0])
              for d in ("gather", "fused")]
    return float((scores[0] - scores[1]).abs().max())


def relative_error(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Largest |got - ref| over ref's largest magnitude."""
    ref, got = ref.detach().double().cpu(), got.detach().double().cpu()
    return float((got - ref).abs().max() / ref.abs().max())


def max_errors(device: str, dtype: torch.dtype, cases: dict = CASES, dispatch: str = "fused") -> dict[str, float]:
    """Case -> the largest relative error over the output and the gradients (`dispatch` in dtype vs gather in fp64),
    and over the output of a forward without autograd (inference keeps no pre-activation)."""
    errors = {}
    for name, case in cases.items():
        ref, fused = build(case, "gather").double(), build(case, dispatch).to(device, dtype)  # the same weights
        x = torch.randn(case[0], case[1], case[2], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        errors[name] = max(relative_error(a, b) for a, b in zip(outputs(ref, x), outputs(fused, x.to(device, dtype))))
        with torch.no_grad():
            errors[f"{name}, inference"] = relative_error(ref(x).output, fused(x.to(device, dtype)).output)
    return errors


def cuda_tiles() -> dict[str, float]:
    """max_errors of LARGE_CASES run with the CUDA tile sizes of every epilogue (interpreted: fp32 on CPU)."""
    tiles = fused_module.GEMM_TILES
    fused_module.GEMM_TILES = fused_module.CUDA_GEMM_TILES
    try:
        return max_errors("cpu", torch.float32, LARGE_CASES)
    finally:
        fused_module.GEMM_TILES = tiles


def refusals_and_edges() -> dict[str, bool]:
    """A bank of another dtype than its input is refused (outside autocast); an empty batch gives an empty output."""
    case = CASES["gelu, bias, one tile"]
    layer = build(case, "fused")
    layer.router.double()  # fp64 patches and routing, an fp32 bank
    try:
        layer(torch.randn(*case[:3], dtype=torch.float64))
        refused = False
    except PmoeError as e:
        refused = "give them one dtype" in str(e)
    empty = build(case, "fused")(torch.randn(0, *case[1:3])).output.shape == (0, case[1], case[2])
    return {"dtype mismatch refused": refused, "empty batch": empty}


if __name__ == "__main__":
    print(json.dumps({"runs_fused": runs_fused(torch.zeros(1)), "errors": max_errors("cpu", torch.float32),
                      "cuda_tiles": cuda_tiles(), "saliency_error": saliency_error("cpu", torch.float32),
                      "checks": refusals_and_edges()}))
