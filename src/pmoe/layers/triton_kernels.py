"""Triton kernels of the fused expert bank (`pmoe.layers.fused`): GEMMs over expert-major row blocks whose rows are
gathered from, or summed into, another matrix inside the kernel (ScatterMoE's idea, for expert choice's equal
row counts: every expert e owns rows e*M .. e*M+M-1 of the routed copy, which is never written out).

`rows_gemm`:  C[e*M+m, :] = epilogue(A[a_row(e, m), :] @ B[e])            (one program: a BLOCK_M x BLOCK_N tile)
It accumulates in fp32. `pmoe.layers.fused` imports this module where Triton is installed (CUDA builds of torch
ship it; on CPU the kernels run under TRITON_INTERPRET=1, which the tests use).
"""
from __future__ import annotations

import functools

import triton
import triton.language as tl

from pmoe.layers import fused

# the codes of `pmoe.layers.fused`, as the constants a kernel may read: rows_gemm's epilogues, the activations
STORE = tl.constexpr(fused.STORE)
STORE_ACT = tl.constexpr(fused.STORE_ACT)
SCATTER_ADD = tl.constexpr(fused.SCATTER_ADD)
ACT_BACKWARD = tl.constexpr(fused.ACT_BACKWARD)
GELU = tl.constexpr(fused.GELU)
RELU = tl.constexpr(fused.RELU)


@functools.cache
def shared_memory(device_index: int) -> int:
    """Bytes of shared memory a program may take on that CUDA device (its opt-in maximum per block)."""
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == GELU:  # exact (erf) GELU, nn.GELU()'s
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    else:  # RELU
        return tl.maximum(z, 0.0)


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    if ACT == GELU:
        return 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    else:  # RELU
        return (z > 0).to(tl.float32)


@triton.jit
def rows_gemm_kernel(a_ptr, a_rows_ptr, b_ptr, bias_ptr, gate_ptr, c_ptr, c2_ptr, c3_ptr, c_rows_ptr, dgate_ptr,
                     M, N, K, stride_a, stride_be, stride_bk, stride_bn,
                     GATHER_A: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, ACT: tl.constexpr,
                     EPILOGUE: tl.constexpr, EVEN_K: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """Epilogues (acc = A-rows @ B[e], + bias[e] if HAS_BIAS):
    STORE         C[row] = act(acc)                                     (inference: no pre-activation kept)
    STORE_ACT     C[row] = acc, C2[row] = act(acc)                      (pre-activation kept for the backward)
    SCATTER_ADD   C[c_rows[row]] += gate[row] * acc (fp32 C; gate if HAS_GATE)
    ACT_BACKWARD  acc = dY-rows @ W2[e]: dgate[row] += sum_n C3[row] * acc (C3: the kept activation),
                  C[row] = gate[row] * acc * act'(Z) with Z = C2[row] (the kept pre-activation)
    """
    e = tl.program_id(1)
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n  # tiles of GROUP_M row blocks walked column by column: B tiles stay in L2
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m, mask_n = offs_m < M, offs_n < N
    rows = e.to(tl.int64) * M + offs_m  # this expert's rows of the routed copy
    # the loads read rows and columns wrapped into range (no masks in the loop); the epilogue drops them
    a_rows = e.to(tl.int64) * M + offs_m % M
    a_rows = tl.load(a_rows_ptr + a_rows).to(tl.int64) if GATHER_A else a_rows
    a_ptrs = a_ptr + a_rows[:, None] * stride_a + offs_k[None, :]
    b_ptrs = b_ptr + e.to(tl.int64) * stride_be + offs_k[:, None] * stride_bk + (offs_n % N)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a, b = tl.load(a_ptrs), tl.load(b_ptrs)
        else:
            mask_k = offs_k < K - k0
            a = tl.load(a_ptrs, mask=mask_k[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=mask_k[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + e * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    c_offs = rows[:, None] * N + offs_n[None, :]
    if EPILOGUE == STORE:
        tl.store(c_ptr + c_offs, _act(acc, ACT).to(c_ptr.dtype.element_ty), mask=mask)
    elif EPILOGUE == STORE_ACT:
        tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=mask)
        tl.store(c2_ptr + c_offs, _act(acc, ACT).to(c2_ptr.dtype.element_ty), mask=mask)
    elif EPILOGUE == SCATTER_ADD:
        if HAS_GATE:
            acc *= tl.load(gate_ptr + rows, mask=mask_m, other=0.0).to(tl.float32)[:, None]
        c_rows = tl.load(c_rows_ptr + rows, mask=mask_m, other=0).to(tl.int64)
        tl.atomic_add(c_ptr + c_rows[:, None] * N + offs_n[None, :], acc, mask=mask, sem="relaxed")
    else:
        act = tl.load(c3_ptr + c_offs, mask=mask, other=0.0).to(tl.float32)
        tl.atomic_add(dgate_ptr + rows, tl.sum(act * acc, axis=1), mask=mask_m, sem="relaxed")
        z = tl.load(c2_ptr + c_offs, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(gate_ptr + rows, mask=mask_m, other=0.0).to(tl.float32)
        tl.store(c_ptr + c_offs, (acc * gate[:, None] * _act_grad(z, ACT)).to(c_ptr.dtype.element_ty), mask=mask)
