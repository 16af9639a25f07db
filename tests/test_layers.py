import functools

import pytest
import torch
from torch import nn

from pmoe.errors import PmoeError
from pmoe.layers import ConvExperts, MlpExperts, MoEMlp, PatchMoE, TokenMoE, collect_aux_loss, relu_neurons
from pmoe.layers import moe as moe_module
from pmoe.layers.reference import expert_loop_forward, loop_forward, masked_forward

D = torch.float64


def banks():
    torch.manual_seed(0)
    return {
        "mlp": MlpExperts(4, 12, 6, 5).to(D),
        "relu-neurons": relu_neurons(4, 12, 3, torch.randn(4, 3)).to(D),
        "conv": ConvExperts(4, 3, 2, patch_size=(2, 2), kernel_size=3, bias=True).to(D),
    }


def grads(layer, out):
    layer.zero_grad()
    (out * torch.linspace(-1, 1, out.numel(), dtype=D, device=out.device).view_as(out)).sum().backward()
    return {k: p.grad.clone() for k, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bank", ["mlp", "relu-neurons", "conv"])
@pytest.mark.parametrize("gate", ["softmax_selected", "softmax_all", "hard"])
@pytest.mark.parametrize("combine", ["sum", "concat"])
@pytest.mark.parametrize("l", [1, 3, 9])
def test_patch_moe_equals_per_sample_per_expert_loop(bank, gate, combine, l, device):
    layer = PatchMoE(banks()[bank], l, gate=gate, combine=combine, router_std=0.5).to(device, D)
    x = torch.randn(5, 9, 12, dtype=D, device=device, requires_grad=True)
    fast = layer(x).output
    g_fast = grads(layer, fast)
    slow = loop_forward(layer, x)
    g_slow = grads(layer, slow)
    torch.testing.assert_close(fast, slow)
    assert g_fast.keys() == g_slow.keys() and (gate == "hard") == ("router.weight" not in g_fast)
    for k in g_fast:
        torch.testing.assert_close(g_fast[k], g_slow[k])
    torch.testing.assert_close(fast, masked_forward(layer, x))
    if combine == "sum":
        torch.testing.assert_close(fast, expert_loop_forward(layer, x))


@pytest.mark.parametrize("gate", ["softmax_selected", "hard"])
@pytest.mark.parametrize("l", [1, 4, 9])
def test_dense_dispatch_equals_gather_dispatch(gate, l, device):
    torch.manual_seed(3)
    bank = MlpExperts(4, 12, 6, 5).to(device, D)
    gather = PatchMoE(bank, l, gate=gate, router_std=0.5).to(device, D)
    dense = PatchMoE(bank, l, gate=gate, dispatch="dense").to(device, D)
    dense.router = gather.router
    x = torch.randn(5, 9, 12, dtype=D, device=device)
    a, b = gather(x).output, dense(x).output
    g_a, g_b = grads(gather, a), grads(dense, b)
    torch.testing.assert_close(a, b)
    for k in g_a:
        torch.testing.assert_close(g_a[k], g_b[k])
    torch.testing.assert_close(a, loop_forward(gather, x))


def test_experts_see_only_their_l_patches_per_sample():
    bank = MlpExperts(4, 12, 6).to(D)
    seen = []
    bank.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    PatchMoE(bank, l=2).to(D)(torch.randn(5, 9, 12, dtype=D))
    assert seen == [(4, 5 * 2, 12)]  # k experts x B*l patches, not B*n


def test_patch_moe_with_tied_router_scores_matches_loop():
    layer = PatchMoE(MlpExperts(3, 4, 5).to(D), l=3).to(D)
    layer.router.weight.data.zero_()  # every score ties
    x = torch.randn(2, 6, 4, dtype=D)
    torch.testing.assert_close(layer(x).output, loop_forward(layer, x))


def test_patch_moe_bf16_is_close_to_float32(device):
    torch.manual_seed(0)
    layer = PatchMoE(MlpExperts(4, 16, 32), l=4).to(device)
    x = torch.randn(3, 8, 16, device=device)
    ref = layer(x).output
    with torch.autocast(device.type, dtype=torch.bfloat16):
        low = layer(x).output
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)


def token_reference(layer, x):
    """out[t] = sum over kept choices j of gate * expert_e(x_t), one token at a time."""
    r = layer.route(x)
    G, T, K = r.expert.shape
    flat = x.reshape(G * T, -1)
    out = []
    for i in range(G * T):
        g, t = divmod(i, T)
        acc = 0
        for j in range(K):
            if not r.dropped[g, t, j]:
                acc = acc + r.gates[g, t, j] * layer.experts.forward_expert(r.expert[g, t, j].item(), flat[i:i + 1])[0]
        out.append(acc if torch.is_tensor(acc) else x.new_zeros(layer.experts.out_features))
    return torch.stack(out).view(*x.shape[:2], -1), r


@pytest.mark.parametrize("K,c,group", [(1, 1.0, None), (2, 1.05, None), (2, 0.5, 4), (3, 2.0, 12)])
def test_token_moe_equals_per_token_loop(K, c, group, device):
    torch.manual_seed(1)
    layer = TokenMoE(MlpExperts(4, 6, 7), num_selected=K, capacity_factor=c, group_size=group,
                     noise_std=0.0, router_std=1.0).to(device, D)
    x = torch.randn(3, 8, 6, dtype=D, device=device)
    fast = layer(x)
    g_fast = grads(layer, fast.output)
    slow, r = token_reference(layer, x)
    g_slow = grads(layer, slow)
    torch.testing.assert_close(fast.output, slow)
    for k in g_slow:
        torch.testing.assert_close(g_fast[k], g_slow[k])
    if c < 1:
        assert r.dropped.any()


@pytest.mark.parametrize("B,group_images,samples_a_group", [(4, 2, 2), (6, 4, 2), (3, 2, 1), (4, 1, 1)])
def test_token_moe_routes_groups_of_samples(B, group_images, samples_a_group, device):
    """Groups of `group_images` samples (of gcd(B, group_images) when B is no multiple) route as groups of that many
    samples' tokens: the same routing and output as group_size = samples_a_group * n."""
    torch.manual_seed(2)
    by_images = TokenMoE(MlpExperts(4, 6, 7), capacity_factor=0.5, noise_std=0.0, router_std=1.0,
                         group_images=group_images).to(device, D)
    by_tokens = TokenMoE(MlpExperts(4, 6, 7), capacity_factor=0.5, noise_std=0.0, router_std=1.0,
                         group_size=samples_a_group * 8).to(device, D)
    by_tokens.load_state_dict(by_images.state_dict())
    x = torch.randn(B, 8, 6, dtype=D, device=device)
    a, b = by_images(x), by_tokens(x)
    assert a.routing.expert.shape[:2] == (B // samples_a_group, samples_a_group * 8)
    torch.testing.assert_close(a.output, b.output)
    torch.testing.assert_close(a.aux_loss, b.aux_loss)


def test_token_moe_refuses_both_group_sizes():
    with pytest.raises(PmoeError, match="give group_size .tokens. or group_images .samples. >= 1, not both"):
        TokenMoE(MlpExperts(4, 6, 7), group_size=16, group_images=2)


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_sorted_row_sums_of_large_cuda_layers_equal_the_loop(combine, device, monkeypatch):
    # Large CUDA layers gather by indexing and scatter with index_put_(accumulate=True) (sorted sums, no atomics);
    # forced here at any size and device, they must give the loop's values and gradients, the input's included.
    monkeypatch.setattr(moe_module, "_sorted_scatter", lambda device, numel: True)
    torch.manual_seed(2)
    layer = PatchMoE(MlpExperts(4, 6, 7, 5), 3, combine=combine, router_std=0.5).to(device, D)
    x = torch.randn(3, 8, 6, dtype=D, device=device, requires_grad=True)
    fast, slow = layer(x).output, loop_forward(layer, x)
    torch.testing.assert_close(fast, slow)
    g_fast = grads(layer, fast)
    gx_fast, x.grad = x.grad, None
    g_slow = grads(layer, slow)
    torch.testing.assert_close(gx_fast, x.grad)
    for k in g_slow:
        torch.testing.assert_close(g_fast[k], g_slow[k])


def test_token_moe_aux_loss_weights_and_noise_only_in_training():
    layer = TokenMoE(MlpExperts(4, 6, 7), num_selected=2, importance_weight=0.5, load_weight=0.25)
    x = torch.randn(2, 8, 6)
    layer.train()
    out = layer(x)
    torch.testing.assert_close(out.aux_loss, 0.5 * out.routing.importance_loss + 0.25 * out.routing.load_loss)
    assert out.routing.load_loss > 0 and out.routing.capacity == 5  # train: ceil(8*2*1.05/4)
    layer.eval()
    assert layer(x).routing.load_loss == 0
    assert layer(x).routing.capacity == 6  # eval capacity factor 1.5: ceil(8*2*1.5/4)


def test_moe_mlp_takes_timm_mlp_signature_and_sets_l_from_n():
    make = functools.partial(MoEMlp, num_experts=4, router="patch", num_selected=2)
    mlp = make(in_features=8, hidden_features=16, out_features=None, act_layer=nn.GELU, bias=True, drop=0.0)
    y = mlp(torch.randn(2, 10, 8))
    assert y.shape == (2, 10, 8) and mlp.moe.last_routing.index.shape[-1] == 5  # l = ceil(10 * 2 / 4)
    tok = MoEMlp(8, 16, num_experts=4, router="token")
    assert tok(torch.randn(2, 10, 8)).shape == (2, 10, 8) and collect_aux_loss(tok) > 0


def test_layers_reject_bad_inputs():
    layer = PatchMoE(MlpExperts(4, 12, 6), l=3)
    with pytest.raises(PmoeError, match="d=12"):
        layer(torch.randn(2, 5, 11))
    with pytest.raises(PmoeError, match="l=.*3"):
        layer(torch.randn(2, 2, 12))  # l=3 > n=2
    with pytest.raises(PmoeError, match="combine"):
        PatchMoE(MlpExperts(4, 12, 6), l=3, combine="mean")
    with pytest.raises(PmoeError, match="needs MlpExperts"):
        PatchMoE(ConvExperts(4, 3, 2, patch_size=(2, 2)), l=3, dispatch="dense")
    with pytest.raises(PmoeError, match="router"):
        MoEMlp(8, router="dense")
    with pytest.raises(PmoeError, match="ensemble .* routes tokens: router must be 'token', got 'patch'"):
        MoEMlp(8, num_experts=4, router="patch", ensemble_size=2)
    for l, K in [(None, None), (3, 2)]:
        with pytest.raises(PmoeError, match=f"give one of l .* got l={l}, num_selected={K}"):
            PatchMoE(MlpExperts(4, 12, 6), l=l, num_selected=K)
    with pytest.raises(PmoeError, match="group_size"):
        TokenMoE(MlpExperts(4, 6, 7), group_size=5)(torch.randn(2, 4, 6))
    with pytest.raises(PmoeError, match="output_weights"):
        relu_neurons(4, 12, 3, torch.randn(3, 4))
