"""Expert surgery: pruned models against references built from the unpruned model, exact parameter drops, and
pruned checkpoints that load back to the same outputs (and refuse to load without their pruning record)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import pmoe.layers.moe as moe_layers
from pmoe.checkpoints import load_checkpoint, save_checkpoint
from pmoe.errors import PmoeError
from pmoe.layers import TokenMoE
from pmoe.models import theory_config
from pmoe.models.presets import build_preset
from pmoe.models.theory import build_theory_model
from pmoe.prune.surgery import prune_model, pruning_record
from pmoe.layers.routing import expert_capacity, token_choice
from pmoe.train.vision import model_spec

KEPT = [1, 3]  # of 4 experts (E³: one per member group)


def model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "theory":
        return build_theory_model(theory_config("pmoe", n=8, d=6, experts=4, l=3, router_std=1.0)).eval()
    m = build_preset(name, **({"router_std": 1.0} if name.startswith("wrn") else {})).eval()
    for layer in m.moe_layers():  # routers that matter: spread the scores
        layer.router.weight.data.normal_(0, 1.0)
    return m


def inputs(name: str) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 8, 6) if name == "theory" else torch.randn(3, 3, 32, 32)


def zeroing_hooks(m: nn.Module, pruned: list[int]) -> list:
    """The reference of zero mode: every expert runs, the pruned experts' outputs are set to 0."""
    def zero(module, args, out):
        out = out.clone()
        out[pruned] = 0
        return out
    return [layer.experts.register_forward_hook(zero) for layer in m.moe_layers()]


MODELS = ["theory", "wrn-pmoe-tiny", "vit-moe-tiny", "vit-moe-tiny:patch", "e3-tiny"]


def build(name: str) -> nn.Module:
    base, _, router = name.partition(":")
    if router:
        torch.manual_seed(0)
        return build_preset(base, router=router).eval()
    return model(base)


@pytest.mark.parametrize("name", MODELS)
def test_zero_mode_equals_the_unpruned_model_with_pruned_expert_outputs_zeroed(name):
    m, x = build(name), inputs(name.split(":")[0])
    pruned = prune_model(copy.deepcopy(m), [KEPT] * len(m.moe_layers()), "zero")
    hooks = zeroing_hooks(m, [s for s in range(4) if s not in KEPT])
    assert_close(pruned(x), m(x))
    for h in hooks:
        h.remove()
    assert not torch.allclose(pruned(x), m(x))  # the pruned experts did matter


def neg_inf_router_hooks(m: nn.Module, pruned: list[int]) -> list:
    """The reference of truncate for token routing: the pruned experts' router logits are -inf."""
    def mask(module, args, out):
        out = out.clone()
        out[..., pruned] = float("-inf")
        return out
    return [layer.router.register_forward_hook(mask) for layer in m.moe_layers()]


def test_truncate_equals_token_routing_with_pruned_logits_at_minus_inf():
    m, x = model("vit-moe-tiny"), inputs("vit")
    truncated = prune_model(copy.deepcopy(m), [KEPT, KEPT], "truncate")
    T, K = 65, 2  # tokens per image (64 patches + cls), experts per token
    for layer in m.moe_layers():  # the k'-expert layer's capacity ceil(T*K*c/k') on the k logits
        layer.eval_capacity_factor *= 4 / 2
        assert expert_capacity(T, K, 4, layer.eval_capacity_factor) == expert_capacity(T, K, 2, 1.5)
    neg_inf_router_hooks(m, [0, 2])
    assert_close(truncated(x), m(x))


def test_truncate_e3_routes_each_member_over_its_kept_experts(monkeypatch):
    m, x = model("e3-tiny"), inputs("e3")
    expected = prune_model(copy.deepcopy(m), [KEPT, KEPT], "truncate")(x)
    gone = [0]  # local id of the pruned expert in both member groups ({0, 1} -> 1, {2, 3} -> 3)

    def masked(logits, num_selected, capacity_factor, *args):  # logits (B*M, n, E/M)
        logits = logits.clone()
        logits[..., gone] = float("-inf")
        return token_choice(logits, num_selected, capacity_factor * 2, *args)  # capacity of E/M = 1 expert

    monkeypatch.setattr(moe_layers, "token_choice", masked)  # E³ chooses through TokenMoE.choose
    assert_close(m(x), expected)


@pytest.mark.parametrize("name", ["theory", "wrn-pmoe-tiny"])
def test_truncate_patch_routing_equals_the_unpruned_model_computing_kept_experts_only(name):
    m, x = model(name), inputs(name)
    truncated = prune_model(copy.deepcopy(m), [KEPT], "truncate")
    assert truncated.moe.router.weight.shape[0] == 2
    zeroing_hooks(m, [0, 2])
    assert_close(truncated(x), m(x))  # WRN: the removed channels' constant is folded into the head bias


def numel(*tensors: torch.Tensor) -> int:
    return sum(t.numel() for t in tensors)


@pytest.mark.parametrize("name,mode", [(n, mode) for n in ["theory", "wrn-pmoe-tiny", "vit-moe-tiny", "e3-tiny"]
                                       for mode in ("zero", "truncate")])
def test_parameter_count_drops_by_exactly_the_removed_experts(name, mode):
    m = model(name)
    before = numel(*m.parameters())
    layers = m.moe_layers()
    bank = sum(numel(*layer.experts.parameters()) for layer in layers) // 2  # half of the 4 experts go
    router = sum(numel(layer.router.weight) for layer in layers) // 2 if mode == "truncate" else 0
    head = 0
    if name == "wrn-pmoe-tiny" and mode == "truncate":  # the removed channel blocks of BN and head
        head = (numel(m.norm.weight, m.norm.bias) + numel(m.head.weight)) // 2
    pruned = prune_model(m, [KEPT] * len(layers), mode)
    assert numel(*pruned.parameters()) == before - bank - router - head
    assert all(layer.experts.num_experts == 2 for layer in pruned.moe_layers())


@pytest.mark.parametrize("name,mode", [("theory", "zero"), ("wrn-pmoe-tiny", "truncate"), ("vit-moe-tiny", "zero"),
                                       ("e3-tiny", "truncate")])
def test_pruned_checkpoint_round_trip_and_refusal_without_its_record(tmp_path, name, mode):
    m, x = model(name), inputs(name)
    layers = m.moe_layers()
    arch, cfg = model_spec(m)
    pruned = prune_model(m, [KEPT] * len(layers), mode)
    save_checkpoint(tmp_path, pruned, arch, cfg, pruning=pruning_record([KEPT] * len(layers), mode, [4] * len(layers)))
    loaded, _ = load_checkpoint(tmp_path)
    assert_close(loaded(x), pruned(x), rtol=0, atol=0)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["pruning"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(PmoeError, match=r"tensor '.*' has shape .*, the model expects"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("kept,mode,message", [
    ([[0, 1, 2, 3]], "zero", "keeping 4 of 4 experts; expected 1..3"),
    ([[]], "zero", "keeping 0 of 4 experts"),
    ([[2, 1]], "zero", "must be distinct ascending ids in 0..3"),
    ([[1, 4]], "zero", "must be distinct ascending ids in 0..3"),
    ([[1], [1]], "zero", "2 lists of kept experts for the 1 MoE layers"),
    ([[1]], "half", "mode must be one of"),
])
def test_bad_kept_lists_are_clear_errors(kept, mode, message):
    with pytest.raises(PmoeError, match=message):
        prune_model(model("theory"), kept, mode)


def test_truncate_refuses_fewer_experts_than_tokens_pick_and_layers_pruned_twice():
    with pytest.raises(PmoeError, match="fewer than the 2 each token picks; keep at least 2 or use mode 'zero'"):
        prune_model(model("vit-moe-tiny"), [[1], [1]], "truncate")
    with pytest.raises(PmoeError, match="same number of experts in each of its 2 member groups, got \\[2, 0\\]"):
        prune_model(model("e3-tiny"), [[0, 1], [0, 1]], "zero")
    once = prune_model(model("theory"), [KEPT], "zero")
    with pytest.raises(PmoeError, match="pruned already"):
        prune_model(once, [[0]], "zero")


def test_zero_mode_keeps_token_routing_and_capacity():
    m = model("vit-moe-tiny")
    layer: TokenMoE = prune_model(m, [KEPT, KEPT], "zero").moe_layers()[0]
    assert layer.router.weight.shape[0] == 4 and layer.kept.tolist() == KEPT and layer.experts.num_experts == 2
