"""pmoe.prune criteria: each against a hand computation in float64, the per-layer choice, data-free methods that
never touch data, and the data-driven ones against plain loops over the routing."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from pmoe.errors import PmoeError
from pmoe.layers import ConvExperts, MlpExperts, PatchMoE, TokenMoE
from pmoe.models import theory_config
from pmoe.layers import EnsembleTokenMoE
from pmoe.models.presets import build_preset
from pmoe.models.theory import build_theory_model
from pmoe.prune import METHODS, check_pair, choose_kept, score_experts
from pmoe.layers.routing import PatchRouting

# Routers [4, 2] whose rankings differ under every criterion (keep 2):
W0 = [[1.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
WT = [[3.0, 0.0], [0.5, 0.0], [0.0, 1.5], [-2.2, 0.0]]


def theory_pair() -> tuple[nn.Module, nn.Module]:
    cfg = theory_config("pmoe", n=4, d=2, experts=4, l=2)
    pre, ft = build_theory_model(cfg).double(), build_theory_model(cfg).double()
    pre.moe.router.weight.data = torch.tensor(W0, dtype=torch.float64)
    ft.moe.router.weight.data = torch.tensor(WT, dtype=torch.float64)
    return ft, pre


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_router_criteria_match_hand_computation_and_rank_differently():
    ft, pre = theory_pair()
    delta = [norm(b) - norm(a) for a, b in zip(W0, WT)]  # +2, -2.5, +0.5, +0.2
    hand = {"router-norm-change": delta, "router-norm-change-abs": [abs(x) for x in delta],
            "router-delta-norm": [norm([y - x for x, y in zip(a, b)]) for a, b in zip(W0, WT)],
            "router-norm": [norm(b) for b in WT]}
    kept = {"router-norm-change": [0, 2], "router-norm-change-abs": [0, 1], "router-delta-norm": [1, 3],
            "router-norm": [0, 3]}
    for method, expected in hand.items():
        (scores,) = score_experts(method, ft, pre)
        assert scores.dtype == torch.float64
        assert_close(scores, torch.tensor(expected, dtype=torch.float64))
        assert choose_kept([scores], ft.moe_layers(), keep=2) == [kept[method]], method


def test_random_is_seeded_and_needs_no_pretrained_model():
    ft, _ = theory_pair()
    a, b, c = (score_experts("random", ft, seed=s)[0] for s in (3, 3, 4))
    assert_close(a, b) and not torch.equal(a, c)


def test_every_layer_keeps_the_same_count_and_e3_the_same_per_group():
    vit = build_preset("vit-moe-tiny")
    kept = choose_kept(score_experts("router-norm", vit), vit.moe_layers(), ratio=0.5)
    assert [len(k) for k in kept] == [2, 2]
    e3 = build_preset("e3-tiny")  # 4 experts in 2 groups {0, 1}, {2, 3}
    scores = [torch.tensor([4.0, 3.0, 2.0, 1.0])] * 2  # the global top 2 would both be in group 0
    assert choose_kept(scores, e3.moe_layers(), keep=2) == [[0, 2], [0, 2]]
    assert choose_kept(scores, e3.moe_layers(), ratio=0.5) == [[0, 2], [0, 2]]
    with pytest.raises(PmoeError, match="keep 3 is not a multiple of the 2 member groups"):
        choose_kept(scores, e3.moe_layers(), keep=3)


class Untouchable(nn.Module):
    """A fine-tuned model whose forward must not run."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def moe_layers(self) -> list[nn.Module]:
        return self.model.moe_layers()

    def forward(self, x):
        raise AssertionError("a data-free criterion ran the model")


def untouchable_data():
    raise AssertionError("a data-free criterion read the calibration data")
    yield


@pytest.mark.parametrize("method", ["router-norm-change", "router-norm-change-abs", "router-delta-norm",
                                    "router-norm", "random"])
def test_data_free_methods_touch_no_data(method):
    ft, pre = theory_pair()
    assert score_experts(method, Untouchable(ft), Untouchable(pre))[0].shape == (4,)
    assert score_experts(method, Untouchable(ft), Untouchable(pre), calib=untouchable_data())[0].shape == (4,)


def test_bad_inputs_are_clear_errors():
    ft, pre = theory_pair()
    with pytest.raises(PmoeError, match="compares the fine-tuned routers with the pretrained ones"):
        score_experts("router-norm-change", ft)
    with pytest.raises(PmoeError, match="scores experts on calibration data; none was given"):
        score_experts("saliency", ft, pre)
    with pytest.raises(PmoeError, match="method 'magic' is unknown"):
        score_experts("magic", ft, pre)
    other = build_theory_model(theory_config("pmoe", n=4, d=2, experts=3, l=2))
    with pytest.raises(PmoeError, match="MoE layer 0 has 4 experts when fine-tuned, 3 pretrained"):
        check_pair(ft, other)
    with pytest.raises(PmoeError, match="the fine-tuned model is a MixtureOfCNNs, the pretrained one a ViT"):
        check_pair(ft, build_preset("vit-moe-tiny"))
    with pytest.raises(PmoeError, match="the fine-tuned model has 2 MoE layers, the pretrained one 1"):
        check_pair(build_preset("vit-moe-tiny"), build_preset("vit-moe-tiny", moe_blocks=(1,)))
    with pytest.raises(PmoeError, match=r"router weight \[4, 64\] when fine-tuned, \[4, 32\] pretrained"):
        check_pair(build_preset("vit-moe-tiny"), build_preset("vit-moe-tiny", dim=32, mlp_dim=64))


# ---- data-driven criteria against plain loops ------------------------------------------------------------------

class One(nn.Module):
    """A model of one routed layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def moe_layers(self) -> list[nn.Module]:
        return [self.layer]

    def forward(self, x):
        return self.layer(x).output


def loop_usage(layer: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """frequency, gate-mass, saliency from one expert call per routed (token, expert)."""
    k = layer.num_experts
    routed, gates, salient, tokens = torch.zeros(k), torch.zeros(k), torch.zeros(k), 0
    routed, gates, salient = routed.double(), gates.double(), salient.double()
    for x in batches:
        r = layer.route(x)
        if isinstance(r, PatchRouting):
            tokens += x.shape[0] * x.shape[1]
            choices = [(s, x[b, j], r.gates[b, s, i]) for b in range(x.shape[0]) for s in range(k)
                       for i, j in enumerate(r.index[b, s].tolist())]
        else:
            G, T, K = r.expert.shape
            flat = x.reshape(G * T, -1)
            tokens += G * T
            choices = [(int(r.expert[g, t, c]), flat[g * T + t], r.gates[g, t, c]) for g in range(G) for t in range(T)
                       for c in range(K) if not r.dropped[g, t, c]]
        for s, token, gate in choices:
            y = layer.experts.forward_expert(s, token.unsqueeze(0))
            routed[s] += 1
            gates[s] += gate
            salient[s] += gate * y.norm()
    return {"frequency": routed / tokens, "gate-mass": gates / tokens, "saliency": salient / routed.clamp(min=1)}


def layers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "patch-mlp": PatchMoE(MlpExperts(4, 6, 5), l=3, gate="softmax_all", router_std=1.0),
        "patch-conv": PatchMoE(ConvExperts(3, 2, 3, (2, 2), kernel_size=3, bias=True, preact=True), l=2,
                               combine="concat", router_std=1.0),
        "token": TokenMoE(MlpExperts(4, 6, 5), num_selected=2, eval_capacity_factor=0.6, router_std=1.0),
        "e3": EnsembleTokenMoE(MlpExperts(4, 6, 5), ensemble_size=2, num_selected=1, eval_capacity_factor=0.6,
                               router_std=1.0),
    }


@pytest.mark.parametrize("name", ["patch-mlp", "patch-conv", "token", "e3"])
def test_data_driven_scores_match_a_plain_loop(name):
    layer = layers()[name].double().eval()
    d = layer.in_features
    batches = [torch.randn(4, 5, d, dtype=torch.float64), torch.randn(2, 5, d, dtype=torch.float64)]
    if name == "token":
        assert bool(layer.route(batches[0]).dropped.any())  # capacity binds: dropped choices must not count
    expected = loop_usage(layer, batches)
    for method in ("frequency", "gate-mass", "saliency"):
        (scores,) = score_experts(method, One(layer), calib=iter(batches))
        assert_close(scores, expected[method], msg=f"{name} {method}")


def test_every_method_is_listed():
    assert set(METHODS) == {"router-norm-change", "router-norm-change-abs", "router-delta-norm", "router-norm",
                            "random", "frequency", "gate-mass", "saliency"}
