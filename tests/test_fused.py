"""`PatchMoE(dispatch="fused")`: the Triton kernels against the gather path in float64 (interpreted on CPU, compiled
on CUDA with PMOE_TEST_DEVICE=cuda), the CPU fallback, and the banks the kernels refuse."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pmoe.errors import PmoeError
from pmoe.layers import ConvExperts, MlpExperts, PatchMoE
from pmoe.layers.fused import CUDA_GEMM_TILES, SCATTER_ADD, STORE_ACT, fit_stages, runs_fused
from pmoe.train.distributed.expert_parallel import check_shardable

from fused_cases import CASES, LARGE_CASES, OneLayer, build, max_errors, outputs, relative_error, saliency_error

HERE = Path(__file__).parent


def test_interpreted_kernels_match_the_float64_gather_path(device):
    if device.type == "cuda":
        pytest.skip("on CUDA the compiled kernels are tested (below)")
    pytest.importorskip("triton")  # scripts/setup.sh installs it beside a CPU build of torch
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(HERE.parent / "src")}
    done = subprocess.run([sys.executable, str(HERE / "fused_cases.py")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["runs_fused"], "the kernels did not run (the gather fallback did)"
    assert len(result["errors"]) == 2 * len(CASES) and len(result["cuda_tiles"]) == 2 * len(LARGE_CASES)
    errors = {**result["errors"], **result["cuda_tiles"]}
    assert all(e < 5e-5 for e in errors.values()), errors  # fp32 rounding; a wrong kernel errs by > 0.05
    assert result["saliency_error"] == 0  # calibration calls the bank: both layers gather
    assert all(result["checks"].values()), result["checks"]


def test_kernels_on_cuda(device):
    if device.type != "cuda":
        pytest.skip("the compiled kernels need CUDA (PMOE_TEST_DEVICE=cuda); CPU runs them interpreted above")
    assert runs_fused(torch.zeros(1, device=device, dtype=torch.bfloat16))
    for dtype, cases in ((torch.bfloat16, {**CASES, **LARGE_CASES}), (torch.float16, LARGE_CASES)):
        fused, gather = (max_errors(device.type, dtype, cases, dispatch) for dispatch in ("fused", "gather"))
        # 16-bit rounding alone errs by up to 0.1 here (the gather path too); a wrong kernel errs by far more
        assert all(fused[c] <= 1.25 * gather[c] + 1e-3 for c in fused), (dtype, fused, gather)
    assert saliency_error(device.type, torch.float32) == 0
    case = LARGE_CASES["CUDA tiles, ragged"]  # fp32 weights under bf16 autocast, as training runs them
    x = torch.randn(*case[:3], dtype=torch.float64)
    ref = outputs(build(case, "gather").double(), x)
    errors = {}
    for dispatch in ("gather", "fused"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = outputs(build(case, dispatch).to(device), x.to(device, torch.float32))
        errors[dispatch] = max(relative_error(a, b) for a, b in zip(ref, got))
    assert errors["fused"] <= 1.25 * errors["gather"] + 1e-3, errors


def test_fp32_on_cuda_gathers(device):
    if device.type != "cuda":
        pytest.skip("CUDA only: on CPU the kernels run interpreted in fp32 (above)")
    case = CASES["several tiles, K=2"]  # Triton's exact fp32 tiles compile for 40 s and skip the tensor cores
    x = torch.randn(*case[:3], device=device)
    assert not runs_fused(x)
    for a, b in zip(outputs(build(case, "gather").to(device), x), outputs(build(case, "fused").to(device), x)):
        torch.testing.assert_close(a, b)  # the same path; CUDA's atomic row sums add in any order


def test_pipeline_stages_fit_the_shared_memory():
    wide, square = CUDA_GEMM_TILES[SCATTER_ADD], CUDA_GEMM_TILES[STORE_ACT]  # 128 x 256 and 128 x 128, K tiles of 64
    h200, ada = 232448, 101376  # bytes a block may take (CUDA's opt-in maximum)
    assert fit_stages(wide, 2, h200)["num_stages"] == 3  # bf16: 3 stages of (128 + 256) * 64 * 2 = 48 KiB
    assert fit_stages(square, 4, h200)["num_stages"] == 2  # fp32: 64 KiB a stage, 3 would pass 3/4 of 227 KiB
    assert fit_stages(wide, 2, ada)["num_stages"] == 1  # 74 KiB usable: one stage
    assert fit_stages(wide, 4, 1024)["num_stages"] == 1  # never below one
    assert {k: v for k, v in fit_stages(wide, 2, ada).items() if k != "num_stages"} == \
        {k: v for k, v in wide.items() if k != "num_stages"}  # only the stages change


def test_a_bank_changed_after_construction_is_refused_at_the_call():
    layer = build(CASES["gelu, bias, one tile"], "fused")
    layer.experts.act = nn.SiLU()
    with pytest.raises(PmoeError, match="dispatch='fused' needs MlpExperts with GELU or ReLU"):
        layer(torch.randn(2, 10, 12))


def test_cpu_without_the_interpreter_gathers_the_same_values():
    if runs_fused(torch.zeros(1)):
        pytest.skip("interpreted here: the kernels run on CPU too")
    case = CASES["several tiles, K=2"]
    x = torch.randn(*case[:3])
    for a, b in zip(outputs(build(case, "gather"), x), outputs(build(case, "fused"), x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bank, options, what", [
    (lambda: MlpExperts(4, 8, 16, act_layer=lambda: nn.GELU(approximate="tanh")), {}, "tanh GELU"),
    (lambda: MlpExperts(4, 8, 16, act_layer=nn.SiLU), {}, "SiLU"),
    (lambda: MlpExperts(4, 8, 16, drop=0.1), {}, "dropout"),
    (lambda: MlpExperts(4, 8, 16), {"combine": "concat"}, "concat"),
    (lambda: ConvExperts(4, 3, 8, (2, 2)), {}, "conv experts"),
])
def test_banks_the_kernels_do_not_compute_are_refused(bank, options, what):
    with pytest.raises(PmoeError, match="dispatch='fused' needs MlpExperts with GELU or ReLU"):
        PatchMoE(bank(), l=2, dispatch="fused", **options)


def test_expert_parallelism_refuses_fused_layers():
    model = OneLayer(PatchMoE(MlpExperts(4, 8, 16), l=2, dispatch="fused"))
    check_shardable(model, 1)  # one rank holds every expert: no exchange to hook
    with pytest.raises(PmoeError, match="MoE layer 0 runs its experts in fused kernels"):
        check_shardable(model, 2)
