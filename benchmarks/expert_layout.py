"""Expert-bank weight memory on the GPU: MlpExperts' (k, out, in) weights as stored against the same weights held in
(k, in, out) memory (`relaid`: same shapes, values and state dict; `w.transpose(1, 2)` is then contiguous), fwd+bwd
of the bank alone on gathered rows and of PatchMoE, at the ViT-B, ViT-S and small sizes of `moe_layers.py`, with
fp32 weights under bf16 autocast (biases) and with bf16 weights (no biases). Median of 20 calls after 5, CUDA events.

    PYTHONPATH=src python benchmarks/expert_layout.py benchmarks/results/expert_layout_h200.json
"""
from __future__ import annotations

import json
import statistics
import sys
from typing import Callable

import torch

from moe_layers import call_ms
from pmoe.layers import MlpExperts, PatchMoE


def median_ms(fn: Callable[[], None], reps: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    return round(statistics.median(call_ms(torch.device("cuda"), fn) for _ in range(reps)), 4)


def relaid(bank: MlpExperts) -> MlpExperts:
    """The same logical (k, out, in) weights, held in (k, in, out) memory."""
    for name in ("w1", "w2"):
        p = getattr(bank, name)
        p.data = p.data.transpose(1, 2).contiguous().transpose(1, 2)
    return bank


def main(out: str) -> None:
    results = {}
    for B, n, d, h, l in ((256, 196, 768, 3072, 49), (128, 196, 384, 1536, 49), (32, 64, 192, 768, 16)):
        for weights, bias in ((torch.float32, True), (torch.bfloat16, False)):
            torch.manual_seed(0)
            autocast = torch.autocast("cuda", torch.bfloat16, enabled=weights == torch.float32)
            k = 8
            xe = torch.randn(k, B * l, d, device="cuda", dtype=weights, requires_grad=True)
            x = torch.randn(B, n, d, device="cuda", dtype=weights, requires_grad=True)
            for layout in ("contig", "relaid"):
                bank = MlpExperts(k, d, h, d, bias=bias).cuda().to(weights)
                if layout == "relaid":
                    relaid(bank)
                layer = PatchMoE(bank, l).cuda().to(weights)

                def step(fn: Callable[[], torch.Tensor], inp: torch.Tensor, module: torch.nn.Module) -> None:
                    with autocast:
                        y = fn()
                    y.float().square().mean().backward()
                    inp.grad = None
                    for p in module.parameters():
                        p.grad = None

                setting = "fp32w+autocast+bias" if weights == torch.float32 else "bf16w nobias"
                key = f"d={d} {setting} {layout}"
                results[key] = {"bank_fwdbwd": median_ms(lambda: step(lambda: bank(xe), xe, bank)),
                                "layer_fwdbwd": median_ms(lambda: step(lambda: layer(x).output, x, layer))}
                print(key, results[key], flush=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
