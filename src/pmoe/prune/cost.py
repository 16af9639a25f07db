"""What pruning saves: parameters, forward FLOPs (counted by torch's FlopCounterMode), measured latency."""
from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode



@torch.no_grad()
def forward_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs (2 per multiply-add) of matmuls, convolutions and attention in one eval-mode forward of `model` on x."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return counter.get_total_flops()


@torch.no_grad()
def latency_ms(model: nn.Module, x: Tensor, repeats: int = 10, warmup: int = 5) -> float:
    """Median wall time (ms) of one eval-mode forward of `model` on x."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def model_cost(model: nn.Module, x: Tensor, latency: bool = True) -> dict[str, float]:
    """{'params' (all, trainable or not), 'flops' (per sample), 'latency_ms' (batch x)} of `model` in eval mode."""
    was_training = model.training
    model.eval()
    out = {"params": sum(p.numel() for p in model.parameters()), "flops": round(forward_flops(model, x) / len(x))}
    if latency:
        out["latency_ms"] = latency_ms(model, x)
    model.train(was_training)
    return out
