"""The expert bank of `PatchMoE(dispatch="fused")`: gather, both expert GEMMs, bias, activation, gate and scatter in
two Triton kernels forward and two backward (`pmoe.layers.triton_kernels`), with no routed copy of the patches, of
the gated outputs or of the input gradient in memory; the weight gradients are cuBLAS GEMMs over routed copies made
in the backward, one at a time (a Triton GEMM reducing over gathered rows measured 1.8-2.4x cuBLAS; BENCHMARKS.md).

Forward, for expert e and its rows r = rows[e*M:(e+1)*M] of the (N, d) patches x:
    Z = x[r] @ W1[e]^T + b1[e];  A = act(Z);  out[r] += gate * (A @ W2[e]^T + b2[e])      (Z and A kept)
Backward, with G = dout[r] @ W2[e]:
    dgate = rowsum(A * G) + dout[r] . b2[e];  dZ = gate * G * act'(Z);  dx[r] += dZ @ W1[e]
    dW2[e] = (gate * dout[r])^T A,  db2[e] = sum gate * dout[r];  dW1[e] = dZ^T x[r],  db1[e] = sum dZ
Runs for 16-bit inputs (bf16 or fp16, autocast's included) on CUDA where Triton is installed, and on CPU under
TRITON_INTERPRET=1 (the tests, fp32); elsewhere `PatchMoE` takes its gather path, which computes the same values:
fp32 on CUDA too, where cuBLAS follows torch's float32 matmul precision (Triton's exact fp32 tiles compiled for
40 s each on the H200 and multiply without tensor cores).
"""
from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from pmoe.errors import check
from pmoe.layers.experts import MlpExperts

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# `triton_kernels`' epilogues and activations (defined here: that module imports only where Triton is)
STORE, STORE_ACT, SCATTER_ADD, ACT_BACKWARD = EPILOGUES = 0, 1, 2, 3
GELU, RELU = 1, 2

# CUDA tiles per epilogue: the fastest of benchmarks/fused_kernels.py for each kernel at ViT-B size in bf16 on the
# H200 (BENCHMARKS.md, round 7: ACT_BACKWARD's epilogue took 8.5 ms with the forward's 128 x 128 tile on 4 warps,
# 2.5 ms with its own); the pipeline stages are cut to what fits the GPU's shared memory (`fit_stages`). Small tiles
# when interpreted (the tests also run the CUDA ones there).
_SQUARE = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3)
_WIDE = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
_THIN = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)
CUDA_GEMM_TILES = {STORE: _SQUARE, STORE_ACT: _SQUARE, SCATTER_ADD: _WIDE, ACT_BACKWARD: _THIN}
GEMM_TILES = dict.fromkeys(EPILOGUES, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2)) if INTERPRET \
    else CUDA_GEMM_TILES


def fused_act(act: nn.Module) -> int | None:
    """The kernels' code for the bank's activation, None if they do not compute it (tanh GELU, SiLU, ...)."""
    if type(act) is nn.GELU and act.approximate == "none":
        return GELU
    return RELU if type(act) is nn.ReLU else None


def fusable(experts: nn.Module) -> bool:
    """Whether the fused kernels compute this bank: MlpExperts with GELU or ReLU and no dropout."""
    return isinstance(experts, MlpExperts) and fused_act(experts.act) is not None and experts.drop.p == 0


@functools.cache
def kernels() -> ModuleType | None:
    """`pmoe.layers.triton_kernels`, imported on first use (Triton takes 0.2 s to import); None without Triton."""
    try:
        from pmoe.layers import triton_kernels
    except ImportError:  # CPU builds of torch bring no Triton: PatchMoE gathers instead
        return None
    return triton_kernels


HALF = (torch.bfloat16, torch.float16)


def runs_fused(x: Tensor) -> bool:
    """Whether the kernels run for x, the bank's input in its compute dtype (16-bit on CUDA with Triton; anything
    when interpreted)."""
    return ((x.is_cuda and x.dtype in HALF) or INTERPRET) and kernels() is not None


def _blocks(size: int, block: int) -> int:
    """Tiles of `block` that cover `size`."""
    return -(-size // block)


def fit_stages(tiles: dict, itemsize: int, shared_memory: int) -> dict:
    """tiles with no more pipeline stages than 3/4 of `shared_memory` bytes hold (the rest is left to the epilogue),
    each stage an A and a B tile of `itemsize`-byte elements; at least one."""
    stage = (tiles["BLOCK_M"] + tiles["BLOCK_N"]) * tiles["BLOCK_K"] * itemsize
    return {**tiles, "num_stages": max(1, min(tiles["num_stages"], shared_memory * 3 // 4 // stage))}


def rows_gemm(a: Tensor, b: Tensor, M: int, epilogue: int, c: Tensor, *, act: int, a_rows: Tensor | None = None,
              bias: Tensor | None = None, gate: Tensor | None = None, c2: Tensor | None = None,
              c3: Tensor | None = None, c_rows: Tensor | None = None, dgate: Tensor | None = None) -> None:
    """a (R, K) rows (unit stride), b (k, K, N) any strides; writes c / c2 / dgate and reads c2 / c3 as the
    `triton_kernels` epilogue says (`act`, the bank's activation, is read by those that apply it)."""
    k, K, N = b.shape
    some = a  # stands in for the pointers an epilogue does not read
    tiles = GEMM_TILES[epilogue]
    if a.is_cuda:
        tiles = fit_stages(tiles, a.element_size(), kernels().shared_memory(a.device.index))
    grid = (_blocks(M, tiles["BLOCK_M"]) * _blocks(N, tiles["BLOCK_N"]), k)
    kernels().rows_gemm_kernel[grid](
        a, some if a_rows is None else a_rows, b, some if bias is None else bias, some if gate is None else gate,
        c, c if c2 is None else c2, c if c3 is None else c3, some if c_rows is None else c_rows,
        c if dgate is None else dgate,
        M, N, K, a.stride(0), *b.stride(),
        GATHER_A=a_rows is not None, HAS_BIAS=bias is not None, HAS_GATE=gate is not None, ACT=act,
        EPILOGUE=epilogue, EVEN_K=K % tiles["BLOCK_K"] == 0, **tiles)


def rows_wgrad(p: Tensor, q: Tensor, k: int, *, p_rows: Tensor | None = None, q_rows: Tensor | None = None,
               scale: Tensor | None = None, bias: bool = False) -> tuple[Tensor, Tensor | None]:
    """dW (k, P, Q) = per expert, the sum over its rows of (scale * p-row)^T q-row; db (k, 1, P) the sum of
    scale * p-row if `bias`. p (R, P) and q (R, Q) rows are gathered by p_rows / q_rows (k*M, expert-major) where
    given: cuBLAS over routed copies (a Triton GEMM reducing over gathered rows measured 1.8-2.4x it)."""
    p = p if p_rows is None else p.index_select(0, p_rows)  # (k*M, P)
    if scale is not None:  # fp32 products, rounded once into p's dtype (in place on a routed copy)
        p = torch.mul(p, scale[:, None], out=p if p_rows is not None else torch.empty_like(p))
    q = q if q_rows is None else q.index_select(0, q_rows)  # (k*M, Q)
    p, q = p.view(k, -1, p.shape[-1]), q.view(k, -1, q.shape[-1])
    return torch.bmm(p.transpose(1, 2), q), p.sum(1, keepdim=True) if bias else None


class FusedMlpExperts(torch.autograd.Function):
    """(x (N, d), rows (k*M,), gates (k*M,), w1 (k, h, d), b1 (k, 1, h) | None, w2 (k, d_out, h),
    b2 (k, 1, d_out) | None, act, train) -> (N, d_out): the gated sum of each patch's expert outputs. x and the
    contiguous weights share one dtype; rows and gates are expert-major; `train`: keep what the backward needs.
    The sums run on atomics: not bitwise deterministic from run to run."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor, gates: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                b2: Tensor | None, act: int, train: bool) -> Tensor:
        k, h, _ = w1.shape
        M = rows.numel() // k
        a = x.new_empty(k * M, h)  # (k*M, h) activation, and its pre-activation when training
        if train:
            z = x.new_empty(k * M, h)
            rows_gemm(x, w1.transpose(1, 2), M, STORE_ACT, z, a_rows=rows, bias=b1, c2=a, act=act)
            ctx.save_for_backward(x, rows, gates, w1, b1, w2, b2, z, a)
            ctx.act = act
        else:
            rows_gemm(x, w1.transpose(1, 2), M, STORE, a, a_rows=rows, bias=b1, act=act)
        out = torch.zeros(x.shape[0], w2.shape[1], device=x.device, dtype=torch.float32)  # (N, d_out)
        rows_gemm(a, w2.transpose(1, 2), M, SCATTER_ADD, out, bias=b2, gate=gates, c_rows=rows, act=act)
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, ...]:
        """dout (N, d_out) -> the gradients of x, gates and the weights that need one (module docstring)."""
        x, rows, gates, w1, b1, w2, b2, z, a = ctx.saved_tensors
        need = ctx.needs_input_grad
        k, M = w1.shape[0], rows.numel() // w1.shape[0]
        dout = dout.contiguous()  # (N, d_out)
        dz = torch.empty_like(z)  # (k*M, h)
        dgate = torch.zeros(k * M, device=x.device, dtype=torch.float32)
        rows_gemm(dout, w2, M, ACT_BACKWARD, dz, a_rows=rows, gate=gates, c2=z, c3=a, dgate=dgate, act=ctx.act)
        if b2 is not None:  # the output bias's share of <expert output, dout>
            experts = torch.arange(k, device=x.device).repeat_interleave(M)  # (k*M,)
            dgate += (dout @ b2[:, 0].t()).float()[rows, experts]  # (N, k) in the compute dtype, fp32 sums
        dw2 = db2 = dx = dw1 = db1 = None
        if need[5] or need[6]:
            dw2, db2 = rows_wgrad(dout, a, k, p_rows=rows, scale=gates, bias=b2 is not None)
        if need[0]:
            dx = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
            rows_gemm(dz, w1, M, SCATTER_ADD, dx, c_rows=rows, act=ctx.act)
            dx = dx.to(x.dtype)
        if need[3] or need[4]:
            dw1, db1 = rows_wgrad(dz, x, k, q_rows=rows, bias=b1 is not None)
        return dx, None, dgate.to(gates.dtype) if need[2] else None, dw1, db1, dw2, db2, None, None


def fused_experts(experts: MlpExperts, x: Tensor, rows: Tensor, gates: Tensor) -> Tensor:
    """x (N, d) patches, rows (k*M,) and gates (k*M,) expert-major -> (N, d_out) in x's dtype. Under autocast the
    bank's weights are cast to it (as autocast casts them for a GEMM); otherwise they must have it."""
    weights = [experts.w1, experts.b1, experts.w2, experts.b2]
    if torch.is_autocast_enabled(x.device.type):
        weights = [None if w is None else w.to(x.dtype) for w in weights]
    check(all(w is None or w.dtype == x.dtype for w in weights),
          f"the experts' weights are {experts.w1.dtype} and their input {x.dtype}: give them one dtype, or use autocast")
    w1, b1, w2, b2 = (None if w is None else w.contiguous() for w in weights)
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (x, gates, *experts.parameters()))
    return FusedMlpExperts.apply(x.contiguous(), rows, gates, w1, b1, w2, b2, fused_act(experts.act), train)
