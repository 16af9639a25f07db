import math
from dataclasses import asdict

import pytest
import torch

from pmoe.checkpoints import load_checkpoint, save_checkpoint
from pmoe.errors import PmoeError
from pmoe.layers import EnsembleTokenMoE, MoEMlp, PatchMoE, PatchRouting, TokenMoE, TokenRouting
from pmoe.models import (ARCHS, PRESETS, THEORY_MODELS, E3Config, MixtureOfCNNs, TwoLayerCNN, ViT, ViTConfig, WRNConfig,
                         build_model, build_preset, build_theory_model, preset, theory_config)
from pmoe.models.images import fit_images, patchify, unpatchify

# Presets too slow for a CPU forward+backward at full size: forward only, at two patches per side (their backward
# runs the same code as the tiny presets'); their full-size construction is checked on the meta device.
REDUCED = {"vit-s": 32, "vit-moe-s": 32, "vit-b": 32, "vit-moe-b": 32, "e3-s32": 64}


def wrn_params(c: WRNConfig) -> int:
    w, blocks = [16 * c.widen, 32 * c.widen, 64 * c.widen], (c.depth - 4) // 6
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731  (every conv has a bias)

    def group(i: int, o: int) -> int:
        return sum(2 * ci + conv(ci, o, 3) + 2 * o + conv(o, o, 3) + (conv(i, o, 1) if j == 0 else 0)
                   for j, ci in enumerate([i] + [o] * (blocks - 1)))

    total = conv(c.in_channels, 16, 3) + group(16, w[0]) + group(w[0], w[1])
    if c.experts:
        k, o = c.experts, c.expert_channels
        total += 2 * w[1] + conv(w[1], w[2], 3)  # BN-ReLU-Conv3x3 stride 2
        total += k * (2 * w[2] + conv(w[2], o, c.expert_kernel)) + k * w[2] * c.region ** 2  # experts + routers
        width = k * o
    else:
        total, width = total + group(w[1], w[2]), w[2]
    return total + 2 * width + width * c.num_classes + c.num_classes


def vit_params(c: ViTConfig) -> int:
    d, h, k = c.dim, c.mlp_dim, c.experts
    mlp = 2 * d * h + h + d
    block = 4 * d + 4 * d * d + 4 * d  # two LayerNorms, qkv, proj
    total = c.in_channels * c.patch_size ** 2 * d + d + d + c.tokens * d  # patch embed, cls, pos-emb
    total += sum(block + (k * mlp + k * d if i in c.moe_blocks else mlp) for i in range(c.depth))
    return total + 2 * d + d * c.num_classes + c.num_classes


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hand_count(arch: str, cfg) -> int:
    return wrn_params(cfg) if arch == "wrn" else vit_params(cfg)


def images(cfg, batch: int = 2) -> torch.Tensor:
    s = cfg.input_size or cfg.image_size
    return torch.randn(batch, cfg.in_channels, s, s)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_count_at_full_size(name):
    arch, cfg = preset(name)
    with torch.device("meta"):
        model = build_preset(name)
    assert count(model) == hand_count(arch, cfg)
    known = {"vit-s": 22_050_664, "vit-b": 86_567_656}  # timm's ViT-S/16 and ViT-B/16, 1000 classes
    assert count(model) == known.get(name, count(model))


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_forward_backward(name):
    torch.manual_seed(0)
    overrides = {"image_size": REDUCED[name]} if name in REDUCED else {}
    arch, cfg = preset(name, **overrides)
    model = build_preset(name, **overrides).train()
    assert count(model) == hand_count(arch, cfg)
    with torch.set_grad_enabled(name not in REDUCED):
        logits = model(images(cfg))
    assert logits.shape == (2, cfg.num_classes) and torch.isfinite(logits).all()
    assert torch.isfinite(model.aux_loss()) and (model.aux_loss() > 0) == (arch != "wrn" and bool(cfg.moe_blocks))
    if name in REDUCED:
        return
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])) + model.aux_loss()).backward()
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()
    for layer in model.moe_layers():
        assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_patchify_regions_and_round_trip():
    x = torch.randn(2, 5, 8, 12)
    t = patchify(x, 4)  # 2 x 3 regions of 5x4x4
    assert t.shape == (2, 6, 5 * 16)
    torch.testing.assert_close(t[1, 4], x[1, :, 4:8, 4:8].flatten())  # region (row 1, col 1), channel-first
    assert torch.equal(unpatchify(t, 4, rows=2), x)
    assert torch.equal(patchify(x, 1).view(2, 8, 12, 5).permute(0, 3, 1, 2), x)


@pytest.mark.parametrize("name, n, l, d, width", [("wrn-pmoe-cifar", 64, 16, 640, 4 * 160),
                                                  ("wrn-pmoe-celeba", 16, 2, 640 * 16, 8 * 80)])
def test_wrn_pmoe_layout_of_the_authors(name, n, l, d, width):
    _, cfg = preset(name)
    with torch.device("meta"):
        model = build_preset(name)
    assert (cfg.regions, model.moe.l, model.moe.in_features, model.norm.num_features) == (n, l, d, width)
    assert model.moe.gate == "softmax_all" and model.moe.combine == "concat" and model.moe.experts.norm is not None
    dense = build_preset(name.replace("-pmoe", ""))
    assert [m.out_channels for m in dense.features if isinstance(m, torch.nn.Conv2d)] == [16]
    assert dense.norm.num_features == 640 and dense.features[-1][0].shortcut.out_channels == 640


def test_wrn_pmoe_experts_compute_only_on_their_l_regions():
    torch.manual_seed(0)
    _, cfg = preset("wrn-pmoe-tiny")
    model = build_preset("wrn-pmoe-tiny").eval()
    seen, outs = [], []
    model.moe.experts.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    model.moe.register_forward_hook(lambda m, inp, out: outs.append(out))
    model(images(cfg, batch=3))
    k, l, p = cfg.experts, cfg.l, cfg.region
    assert seen == [(k, 3 * l, 64 * p * p)]  # k experts x B*l regions, not B*n
    r = outs[0].routing
    blocks = outs[0].output.view(3, cfg.regions, k, -1)  # (B, n, k, O*p*p)
    for b in range(3):
        for s in range(k):
            skipped = sorted(set(range(cfg.regions)) - set(r.index[b, s].tolist()))
            assert blocks[b, skipped, s].abs().sum() == 0 and blocks[b, r.index[b, s], s].abs().sum() > 0
    assert isinstance(model.moe.last_routing, PatchRouting)


def test_vit_moe_blocks_are_where_the_config_says():
    with torch.device("meta"):
        vmoe_b = build_preset("vit-moe-b")
        e3 = build_preset("e3-s32")
    assert [i for i, b in enumerate(vmoe_b.blocks) if isinstance(b.mlp, MoEMlp)] == [1, 3, 5, 7, 9, 11]
    assert [i for i, b in enumerate(e3.blocks) if isinstance(b.mlp, MoEMlp)] == [5, 7]
    assert all(isinstance(layer, EnsembleTokenMoE) for layer in e3.moe_layers())
    custom = build_preset("vit-moe-tiny", moe_blocks=[0, 2])  # a list, as from JSON
    assert [i for i, b in enumerate(custom.blocks) if isinstance(b.mlp, MoEMlp)] == [0, 2]
    assert custom.config.moe_blocks == (0, 2) and build_preset("vit-tiny").moe_layers() == []
    layer = vmoe_b.moe_layers()[0]
    assert (layer.num_experts, layer.num_selected, layer.router.weight.shape) == (8, 2, (8, 768))


@pytest.mark.parametrize("router", ["token", "patch"])
def test_vit_moe_with_each_router(router):
    torch.manual_seed(0)
    _, cfg = preset("vit-moe-tiny", router=router)
    model = build_preset("vit-moe-tiny", router=router).train()
    logits = model(images(cfg))
    layers = model.moe_layers()
    assert len(layers) == 2 and all(isinstance(m, TokenMoE if router == "token" else PatchMoE) for m in layers)
    aux = model.aux_loss()
    assert (aux > 0) if router == "token" else (aux == 0)
    for ffn in model.moe_ffns():
        r = ffn.moe.last_routing
        if router == "patch":  # every expert takes l = ceil(n*K/k) of each image's 65 tokens
            assert isinstance(r, PatchRouting) and r.index.shape == (2, 4, math.ceil(65 * 2 / 4))
        else:
            assert isinstance(r, TokenRouting) and r.expert.shape == (2, 65, 2)
    (logits.sum() + aux).backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for m in layers)


def e3_tiny(**overrides):
    torch.manual_seed(0)
    _, cfg = preset("e3-tiny", **overrides)
    return cfg, build_preset("e3-tiny", **overrides)


def test_e3_member_m_is_routed_only_to_group_m():
    cfg, model = e3_tiny(experts=8, ensemble_size=4)
    model.train()(images(cfg, batch=3))
    M, e, n = 4, 2, cfg.tokens
    for ffn in model.moe_ffns():
        r = ffn.moe.last_routing
        assert r.expert.shape == (3, M * n, 1)  # groups: an image's M copies
        member = torch.arange(M * n).div(n, rounding_mode="floor").view(1, -1, 1)
        assert torch.equal(r.expert.div(e, rounding_mode="floor"), member.expand_as(r.expert))


def test_e3_member_only_depends_on_its_own_experts():
    cfg, model = e3_tiny()
    model.eval()
    x = images(cfg)
    before = model.forward_members(x)
    with torch.no_grad():
        for layer in model.moe_layers():  # group 1 = experts 2, 3: their weights and router rows
            layer.experts.w1[2:].normal_()
            layer.router.weight[2:].normal_()
    after = model.forward_members(x)
    assert torch.equal(before[:, 0], after[:, 0]) and not torch.allclose(before[:, 1], after[:, 1])


@pytest.mark.parametrize("member", [0, 1])
@pytest.mark.parametrize("group_images,batch", [(1, 3), (2, 4), (4, 6)])  # 4 of 6 images: groups of gcd(6, 4) = 2
def test_e3_member_equals_vit_moe_made_of_its_group(member, group_images, batch):
    """Member m of E³ is a ViT-MoE of group m's experts, its routing groups of images the same (capacity 0.6 of the
    tokens' choices: groups of several images route otherwise than single ones)."""
    opts = {"group_images": group_images, "eval_capacity_factor": 0.6}
    cfg, e3 = e3_tiny(**opts)
    e3.eval()
    e = cfg.experts // cfg.ensemble_size
    fields = {k: v for k, v in asdict(cfg).items() if k != "ensemble_size"}
    vit = ViT(ViTConfig(**{**fields, "experts": e})).eval()
    state = {k: v[member * e:(member + 1) * e] if ".mlp.moe." in k else v for k, v in e3.state_dict().items()}
    vit.load_state_dict(state)
    x = images(cfg, batch=batch)
    torch.testing.assert_close(e3.forward_members(x)[:, member], vit(x))
    if group_images > 1:  # and differently from groups of one image
        _, single = e3_tiny(eval_capacity_factor=0.6)
        single.load_state_dict(e3.state_dict())
        assert not torch.allclose(single.eval().forward_members(x)[:, member], vit(x))


def test_e3_output_averages_member_probabilities():
    cfg, model = e3_tiny()
    model.eval()
    x = images(cfg, batch=3)
    members = model.forward_members(x)  # (B, M, C)
    assert members.shape == (3, 2, cfg.num_classes) and not torch.allclose(members[:, 0], members[:, 1])
    torch.testing.assert_close(model(x).exp(), members.softmax(dim=-1).mean(dim=1))
    torch.testing.assert_close(model(x).softmax(dim=-1), model(x).exp())


def test_e3_refuses_experts_not_a_multiple_of_members():
    cfg = asdict(preset("e3-tiny")[1])
    with pytest.raises(PmoeError, match="experts=6 must be a multiple of ensemble_size=4"):
        build_model("e3", {**cfg, "experts": 6, "ensemble_size": 4})
    with pytest.raises(PmoeError, match="E=6 must be a multiple of the ensemble size M=4"):
        EnsembleTokenMoE(build_preset("vit-moe-tiny", experts=6).moe_layers()[0].experts, ensemble_size=4)
    with pytest.raises(PmoeError, match="router must be 'token'"):
        build_model("e3", {**cfg, "router": "patch"})


@pytest.mark.parametrize("name", ["wrn-pmoe-tiny", "vit-moe-tiny", "e3-tiny"])
def test_checkpoint_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    arch, cfg = preset(name, num_classes=3)
    model = build_preset(name, num_classes=3)
    x = images(cfg)
    model.train()(x)  # moves BatchNorm statistics off their initial values
    model.eval()
    save_checkpoint(tmp_path, model, arch, asdict(cfg))
    loaded, saved = load_checkpoint(tmp_path)
    assert type(loaded) is type(model) and loaded.config == cfg and saved["arch"] == arch
    assert torch.equal(loaded(x), model(x))


def test_inputs_smaller_than_the_model_are_zero_padded():
    x = torch.randn(2, 1, 28, 28)
    padded = fit_images(x, 1, 32, 28)
    assert torch.equal(padded, torch.nn.functional.pad(x, (2, 2, 2, 2)))
    fmnist = build_preset("wrn-pmoe-cifar", in_channels=1, input_size=28, widen=1, expert_channels=8)
    assert fmnist(x).shape == (2, 10) and fmnist.moe.l == 16 and fmnist.config.regions == 64
    assert build_preset("wrn-pmoe-tiny", in_channels=1, image_size=28, region=1).config.regions == 49
    assert build_preset("vit-tiny", in_channels=1, image_size=28)(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["wrn-pmoe-tiny", "vit-moe-tiny", "e3-tiny"])
@pytest.mark.parametrize("shape, bad", [((2, 1, 32, 32), "2, 1, 32, 32"), ((2, 3, 28, 28), "2, 3, 28, 28"),
                                        ((2, 3, 32, 30), "2, 3, 32, 30"), ((3, 32, 32), "3, 32, 32")])
def test_bad_images_are_refused_naming_the_shape(name, shape, bad):
    model = build_preset(name)
    with pytest.raises(PmoeError, match=rf"images must be \(B, 3, 32, 32\).*got shape \({bad}\)"):
        model(torch.randn(*shape))


@pytest.mark.parametrize("name, overrides, message", [
    ("wrn-pmoe-celeba", {"image_size": 28}, "region=4 must divide the 7x7 last map"),
    ("wrn-pmoe-cifar", {"l": 65}, "l .* must be in 1..n=64, got 65"),
    ("wrn-tiny", {"depth": 12}, "depth must be 6.b \\+ 4 .* got 12"),
    ("vit-tiny", {"image_size": 30}, "patch_size=4 must divide image_size=30"),
    ("vit-moe-tiny", {"moe_blocks": (1, 4)}, r"moe_blocks must be .* 0..3, got \[1, 4\]"),
    ("vit-moe-tiny", {"router": "expert"}, "router must be 'token' or 'patch', got 'expert'"),
    ("vit-tiny", {"input_size": 40}, "input_size must be in 1..image_size=32.*got 40"),
])
def test_bad_configs_are_refused(name, overrides, message):
    with pytest.raises(PmoeError, match=message):
        build_preset(name, **overrides)


def test_unknown_presets_and_fields_are_refused():
    with pytest.raises(PmoeError, match="unknown preset 'vit-xl'"):
        preset("vit-xl")
    with pytest.raises(PmoeError, match=r"unknown field\(s\) widen; valid"):
        preset("vit-tiny", widen=2)


def test_every_model_lists_its_routed_layers_with_k_by_d_routers():
    assert sorted(ARCHS) == ["e3", "theory", "vit", "wrn"]
    for name in PRESETS:
        with torch.device("meta"):
            model = build_preset(name)
        for layer in model.moe_layers():
            assert layer.router.weight.shape == (layer.num_experts, layer.in_features)
            assert layer.router.bias is None and layer.experts.num_experts == layer.num_experts
        assert (len(model.moe_layers()) > 0) == ("moe" in name or "e3" in name)
    mix = MixtureOfCNNs(theory_config("pmoe", n=4, d=3, l=2))
    assert mix.moe_layers() == [mix.moe] and TwoLayerCNN(theory_config("cnn", n=4, d=3)).moe_layers() == []
    e3 = build_preset("e3-tiny").moe_layers()[0]
    assert isinstance(e3, EnsembleTokenMoE) and e3.router.weight.shape == (4, 64) and e3.groups == 2


def test_presets_match_their_papers():
    assert preset("wrn-cifar")[1] == WRNConfig(num_classes=10, image_size=32, depth=10, widen=10)
    _, vmoe = preset("vit-moe-b")
    assert (vmoe.dim, vmoe.depth, vmoe.heads, vmoe.mlp_dim, vmoe.patch_size, vmoe.experts, vmoe.num_selected) == \
        (768, 12, 12, 3072, 16, 8, 2)
    _, e3 = preset("e3-s32")
    assert isinstance(e3, E3Config) and (e3.patch_size, e3.dim, e3.depth, e3.moe_blocks, e3.experts,
                                         e3.ensemble_size, e3.num_selected) == (32, 512, 8, (5, 7), 8, 2, 1)


def test_theory_models_are_presets_built_for_their_data():
    """`build_preset` builds the theory models too: the paper's settings for n patches of dimension d, the same
    weights as `build_theory_model(theory_config(...))` for the same seed; n and d are required."""
    for name in THEORY_MODELS:
        arch, cfg = preset(name, n=16, d=784, seed=3, neurons=4)
        assert arch == "theory" and cfg == theory_config(name, 16, 784, seed=3, neurons=4)
        a, b = build_preset(name, n=16, d=784, seed=3), build_theory_model(theory_config(name, 16, 784, seed=3))
        assert type(a) is type(b) and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                                             b.state_dict().values()))
    with pytest.raises(PmoeError, match="theory model 'pmoe' is built for data: give n and d"):
        build_preset("pmoe", n=16)
    with pytest.raises(PmoeError, match="unknown preset 'vit-huge'"):
        preset("vit-huge")
