"""The layer API other people's models use: `MoEMlp` in a timm-signature ViT block, a routed layer in place of a
transformers Mixtral / Qwen3-MoE sparse block, `collect_aux_loss`, per-call l, and the typed contracts."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pmoe.layers
import pmoe.models
from pmoe.errors import PmoeError
from pmoe.layers import (HFMoEBlock, MlpExperts, MoEMlp, PatchMoE, RoutedLayer, TokenMoE, collect_aux_loss,
                         routed_layers)
from pmoe.models import MoEModel, build_preset, build_theory_model, theory_config
from pmoe.prune import prune_model

pytestmark = pytest.mark.usefixtures("one_thread")


class TimmBlock(nn.Module):
    """Pre-norm block that builds its FFN as timm's `vision_transformer.Block` does (keywords only)."""

    def __init__(self, dim: int, mlp_layer: type[nn.Module]) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = mlp_layer(in_features=dim, hidden_features=2 * dim, act_layer=nn.GELU, norm_layer=None, bias=True,
                             drop=0.0, device=None, dtype=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def tiny_vit(router: str) -> nn.Module:
    """(B, n, 8) tokens -> (B, 3) logits, two timm-signature blocks with MoE FFNs."""
    torch.manual_seed(0)
    mlp = partial(MoEMlp, num_experts=4, router=router, num_selected=2)
    return nn.Sequential(nn.Linear(8, 16), TimmBlock(16, mlp), TimmBlock(16, mlp), nn.LayerNorm(16),
                         nn.Flatten(1), nn.LazyLinear(3))


def module_state(model: nn.Module) -> dict:
    """Every plain attribute of every submodule but `last_routing` (ints, floats, strings, None)."""
    return {(name, k): v for name, m in model.named_modules() for k, v in vars(m).items()
            if not k.startswith("_") and k != "last_routing"}


@pytest.mark.parametrize("router", ["token", "patch"])
def test_moe_mlp_in_a_timm_block_trains_with_the_collected_aux_loss(router):
    model = tiny_vit(router)
    x, y = torch.randn(8, 10, 8), torch.randint(3, (8,))
    model(x)  # materialises the lazy head
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        task = F.cross_entropy(model(x), y)
        aux = collect_aux_loss(model)
        (task + aux).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad()
        losses.append(task.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (aux > 0) if router == "token" else (aux == 0)
    layers = routed_layers(model)
    assert len(layers) == 2 and all(m.router.weight.grad is None for m in layers)  # zero_grad(set_to_none)
    if router == "token":  # the aux loss alone reaches the routers
        model(x)
        collect_aux_loss(model).backward()
        assert all(m.router.weight.grad.abs().sum() > 0 for m in layers)


def test_patch_router_l_is_computed_per_call_and_forward_mutates_nothing_else():
    mlp = MoEMlp(8, 16, num_experts=4, router="patch", num_selected=2)
    before = module_state(mlp)
    for n, l in [(10, 5), (17, 9), (3, 2)]:  # l = ceil(n * K / k)
        assert mlp(torch.randn(2, n, 8)).shape == (2, n, 8)
        assert mlp.moe.last_routing.index.shape == (2, 4, l) and mlp.moe.patches_per_expert(n) == l
    assert module_state(mlp) == before
    model = build_preset("vit-moe-tiny", router="patch")
    before = module_state(model)
    model(torch.randn(2, 3, 32, 32))
    assert module_state(model) == before and all(m.last_routing is not None for m in model.moe_layers())


def test_moe_mlp_takes_timms_factory_arguments():
    mlp = MoEMlp(8, 16, num_experts=4, device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in mlp.parameters()} == {("meta", torch.bfloat16)}


def test_every_public_name_is_exported():
    for package in (pmoe.layers, pmoe.models):
        assert all(getattr(package, name) is not None for name in package.__all__)
    assert {"ViT", "ViTConfig", "WideResNet", "WRNConfig", "E3ViT", "E3Config", "build_preset", "MoEModel"} <= \
        set(pmoe.models.__all__)
    assert {"MoEMlp", "PatchMoE", "TokenMoE", "EnsembleTokenMoE", "RoutedLayer", "collect_aux_loss"} <= \
        set(pmoe.layers.__all__)


def test_every_model_is_a_moe_model_and_every_routed_layer_a_routed_layer():
    models = [build_preset(name) for name in ("wrn-pmoe-tiny", "vit-moe-tiny", "e3-tiny", "vit-tiny")]
    models += [build_theory_model(theory_config(m, n=16, d=9)) for m in ("cnn", "pmoe")]
    for model in models:
        assert isinstance(model, MoEModel)
        assert all(isinstance(m, RoutedLayer) for m in model.moe_layers())
    wrn, vit, e3, dense, cnn, mix = models
    assert [m.groups for m in e3.moe_layers()] == [2, 2] and [m.groups for m in vit.moe_layers()] == [1, 1]
    assert (e3.ensemble_size, vit.ensemble_size) == (2, 1)
    assert (wrn.moe.combine, vit.moe_layers()[0].combine) == ("concat", "sum")
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(vit.eval().forward_members(x), vit(x).unsqueeze(1))  # one member: its own logits
    assert wrn.concat_head() == (wrn.norm, wrn.head) and dense.moe_layers() == [] and cnn.moe_layers() == []
    assert mix.moe_layers() == [mix.moe]
    with pytest.raises(PmoeError, match="no cell mapping for TwoLayerCNN"):
        cnn.cell_grid(x)


class ConcatModel(MoEModel):
    """A concat routed layer without the WRN-pMoE head."""

    def __init__(self) -> None:
        super().__init__()
        self.moe = PatchMoE(MlpExperts(4, 6, 5), l=2, combine="concat")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x).output


def test_truncating_a_concat_layer_needs_the_model_to_name_its_head():
    with pytest.raises(PmoeError, match="ConcatModel: truncating a concat layer needs the WRN-pMoE head"):
        prune_model(ConcatModel(), [[0, 1]], "truncate")


def hf_model(family: str) -> nn.Module:
    """A tiny random transformers MoE causal LM (no download): 2 layers, 4 experts, top-2."""
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, num_experts_per_tok=2, output_router_logits=True,
                  router_aux_loss_coef=0.02, attn_implementation="eager")
    torch.manual_seed(0)
    if family == "mixtral":
        cfg = transformers.MixtralConfig(intermediate_size=64, num_local_experts=4, **common)
        return transformers.MixtralForCausalLM(cfg)
    cfg = transformers.Qwen3MoeConfig(intermediate_size=64, moe_intermediate_size=32, num_experts=4, head_dim=8,
                                      decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, **common)
    return transformers.Qwen3MoeForCausalLM(cfg)


def swap_in_pmoe(model: nn.Module) -> list[HFMoEBlock]:
    """Every decoder layer's sparse block -> a pmoe TokenMoE (top-2 of 4 MLP experts) behind `HFMoEBlock`."""
    blocks = []
    for layer in model.model.layers:
        d, gate = model.config.hidden_size, layer.mlp.gate
        moe = TokenMoE(MlpExperts(4, d, 64, act_layer=nn.SiLU, bias=False), num_selected=2, noise_std=0.0)
        layer.mlp = HFMoEBlock(moe, gate)
        blocks.append(layer.mlp)
    return blocks


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_pmoe_layer_swapped_into_a_transformers_moe_model(family):
    model = hf_model(family)
    blocks = swap_in_pmoe(model)
    seen = []
    for b in blocks:
        b.register_forward_hook(lambda m, args, out: seen.append((m, args[0].detach(), out.detach())))
    ids = torch.randint(64, (4, 12))
    model.eval()
    out = model(input_ids=ids, labels=ids)
    assert len(out.router_logits) == 2 and len(seen) == 2
    for (block, x, y), logits in zip(seen, out.router_logits):  # the host records the pmoe router's logits
        torch.testing.assert_close(logits, block.layer.router(x).reshape(-1, 4))
        torch.testing.assert_close(y, block.layer(x).output)  # the block computes what the pmoe layer computes
    assert block.gate.weight is block.layer.router.weight and torch.isfinite(out.aux_loss)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(input_ids=ids, labels=ids)  # loss = LM loss + coef * the host's load-balancing loss
        (out.loss + collect_aux_loss(model)).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert all(b.layer.router.weight.grad.abs().sum() > 0 for b in blocks)
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


def test_hf_block_refuses_a_layer_of_another_shape():
    model = hf_model("mixtral")
    with pytest.raises(PmoeError, match=r"host's router weight is \[4, 32\]; the pmoe layer's router is \[8, 32\]"):
        HFMoEBlock(TokenMoE(MlpExperts(8, 32, 64)), model.model.layers[0].mlp.gate)
